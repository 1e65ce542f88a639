"""Pascal VOC XML, NEU-DET's own annotation format: class names and boxes of one file.

Kept apart from the loader so the one place that reads VOC also decides what a broken XML is.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from cascade_defect.data.records import DatasetError


def _classes_from_voc(xml_files: Sequence[Path]) -> list[str]:
    """Classes named by the boxes of Pascal VOC files (for datasets without class folders)."""
    names: set[str] = set()
    for path in xml_files:
        try:
            names.update(obj["name"] for obj in _parse_voc(path)["objects"])
        except DatasetError:
            continue  # the per-image pass reports the broken file with its name
    if not names:
        raise DatasetError("cannot infer classes: the XML annotations name no objects")
    return sorted(names)


def _parse_voc(path: Path) -> dict:
    try:
        tree = ET.parse(path)
    except ET.ParseError as error:
        raise DatasetError(f"unparsable XML annotation: {error}") from error
    node = tree.getroot()
    size = node.find("size")

    def number(parent: ET.Element | None, tag: str) -> float | None:
        child = parent.find(tag) if parent is not None else None
        if child is None or child.text is None or not child.text.strip():
            return None
        try:
            return float(child.text.strip())
        except ValueError as error:
            raise DatasetError(f"<{tag}> is not a number: {child.text!r}") from error

    objects = []
    for obj in node.iter("object"):
        bnd = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        coords = [number(bnd, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if bnd is None or any(c is None for c in coords) or not name:
            raise DatasetError("an <object> lacks a <name> or a complete <bndbox>")
        objects.append(
            {
                "name": name,
                "coords": coords,
                "truncated": (obj.findtext("truncated") or "0").strip() == "1",
                "difficult": (obj.findtext("difficult") or "0").strip() == "1",
            }
        )
    return {
        "filename": (node.findtext("filename") or "").strip(),
        "width": number(size, "width"),
        "height": number(size, "height"),
        "objects": objects,
    }
