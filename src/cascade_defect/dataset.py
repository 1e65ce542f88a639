"""Dataset ingest: NEU-DET (and datasets shaped like it) from the layouts people actually have.

Real copies of NEU-DET differ: the original flat ``IMAGES/`` + ``ANNOTATIONS/`` (sometimes with
extra ``Validation_*`` folders), Kaggle's ``train|validation/images/<class>/`` +
``annotations/``, or plain class subfolders. The loader walks the tree once, pairs images and
Pascal VOC XMLs by file stem, and reports every oddity as a :class:`Quirk` in the data card
instead of crashing or silently dropping anything. Broken files either stop the load with an
error that names the file (``on_error="raise"``, the default) or are quarantined and counted
(``on_error="quarantine"``).
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from cascade_defect.progress import progress_disabled
from cascade_defect.settings import NEU_CLASSES

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
ANNOTATION_SUFFIX = ".xml"
# Folder names that describe a layout, never a class.
LAYOUT_FOLDERS = frozenset(
    name.lower()
    for name in (
        "images",
        "image",
        "annotations",
        "annotation",
        "labels",
        "train",
        "validation",
        "valid",
        "val",
        "test",
        "validation_images",
        "validation_annotations",
        "jpegimages",
        "neu-det",
        "neu_det",
    )
)

OnError = Literal["raise", "quarantine"]


class DatasetError(ValueError):
    """A file in the dataset cannot be used; the message names it."""


@dataclass(frozen=True)
class Box:
    """One Pascal VOC object, in pixel coordinates of its image."""

    class_name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    truncated: bool = False
    difficult: bool = False


@dataclass
class ImageRecord:
    """One image with its image-level class and every box its annotation holds."""

    image_id: str
    class_name: str
    image_path: Path
    annotation_path: Path | None
    width: int
    height: int
    mode: str
    sha256: str
    pixel_hash: str
    boxes: list[Box] = field(default_factory=list)


@dataclass(frozen=True)
class Quirk:
    """Something unusual about the data, kept for the data card."""

    kind: str
    path: str
    detail: str
    image_id: str | None = None


@dataclass
class Dataset:
    """The loaded dataset plus what was odd about it."""

    root: Path
    layout: str
    class_names: list[str]
    images: list[ImageRecord]
    quirks: list[Quirk]
    quarantined: list[Quirk]
    image_level_only: bool = False
    """No annotation files at all: the class folders are the only labels (no boxes)."""

    def images_frame(self) -> pd.DataFrame:
        """One row per image (no boxes), the table later stages work from."""
        return pd.DataFrame(
            [
                {
                    "image_id": r.image_id,
                    "class_name": r.class_name,
                    "image_path": str(r.image_path),
                    "annotation_path": str(r.annotation_path) if r.annotation_path else None,
                    "width": r.width,
                    "height": r.height,
                    "mode": r.mode,
                    "sha256": r.sha256,
                    "pixel_hash": r.pixel_hash,
                    "n_boxes": len(r.boxes),
                }
                for r in self.images
            ]
        )

    def boxes_frame(self) -> pd.DataFrame:
        """One row per box, with the image's own class beside the box's class."""
        rows = [
            {"image_id": r.image_id, "image_class": r.class_name, **asdict(b)}
            for r in self.images
            for b in r.boxes
        ]
        columns = [
            "image_id",
            "image_class",
            "class_name",
            "xmin",
            "ymin",
            "xmax",
            "ymax",
            "truncated",
            "difficult",
        ]
        return pd.DataFrame(rows, columns=columns)

    def quirks_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [asdict(q) for q in self.quirks], columns=["kind", "path", "detail", "image_id"]
        )

    def subsample(self, per_class: int, seed: int = 0) -> Dataset:
        """A smaller dataset with at most ``per_class`` images of each class (for smoke runs)."""
        rng = np.random.default_rng(seed)
        kept: list[ImageRecord] = []
        for name in self.class_names:
            members = [r for r in self.images if r.class_name == name]
            if len(members) > per_class:
                order = rng.permutation(len(members))[:per_class]
                members = [members[i] for i in sorted(order)]
            kept.extend(members)
        kept_ids = {r.image_id for r in kept}
        return Dataset(
            root=self.root,
            layout=self.layout,
            class_names=list(self.class_names),
            images=kept,
            quirks=[q for q in self.quirks if q.image_id is None or q.image_id in kept_ids],
            quarantined=list(self.quarantined),
            image_level_only=self.image_level_only,
        )


def load_dataset(
    root: str | Path,
    *,
    class_names: Sequence[str] | None = NEU_CLASSES,
    on_error: OnError = "raise",
    progress: bool = True,
) -> Dataset:
    """Load every image and annotation below ``root``.

    ``class_names`` lists the known classes (NEU-DET's six by default); an image's class is the
    nearest folder named after a class, else the longest known class that prefixes its file
    name (``rolled-in_scale_12`` is ``rolled-in_scale``, not ``rolled-in``). With
    ``class_names=None`` the classes are the names of the folders that hold images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if on_error not in ("raise", "quarantine"):
        raise ValueError("on_error must be 'raise' or 'quarantine'")

    image_files, xml_files, yolo_files = _scan(root)
    if not image_files:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below {root}")
    yolo_names = yolo_class_names(root) if yolo_files else None
    if yolo_files and yolo_names is None:
        raise DatasetError(
            f"{root} holds YOLO label files but no names file ({', '.join(NAMES_FILES)})"
        )
    if class_names is not None:
        known = list(class_names)
    elif yolo_names is not None:
        known = list(yolo_names)
    elif xml_files and not _has_class_folders(root, image_files):
        known = _classes_from_voc(xml_files)
    else:
        known = _classes_from_folders(root, image_files)
    image_level_only = not xml_files and not yolo_files
    yolo_by_stem = {path.stem.lower(): path for path in yolo_files}
    quirks: list[Quirk] = []
    quarantined: list[Quirk] = []

    def fail(kind: str, path: Path, detail: str, image_id: str | None = None) -> None:
        if on_error == "raise":
            raise DatasetError(f"{path}: {detail}")
        log.warning("quarantined %s: %s", path, detail)
        quarantined.append(Quirk(kind=kind, path=str(path), detail=detail, image_id=image_id))

    xml_by_stem = _index_annotations(root, xml_files, quirks)
    ids = _unique_ids(root, image_files, quirks)
    records: list[ImageRecord] = []
    used_annotations: set[Path] = set()
    for image_path in tqdm(
        image_files, desc="Reading images", disable=progress_disabled(progress), unit="img"
    ):
        image_id = ids[image_path]
        try:
            meta = _read_image(image_path)
        except DatasetError as error:
            fail("corrupt_image", image_path, str(error), image_id)
            continue
        stem = image_path.stem.lower()
        annotation_path = xml_by_stem.get(stem) or yolo_by_stem.get(stem)
        annotation = None
        if annotation_path is not None:
            used_annotations.add(annotation_path)
            try:
                annotation = (
                    _parse_voc(annotation_path)
                    if annotation_path.suffix.lower() == ANNOTATION_SUFFIX
                    else {
                        "filename": "",
                        "width": None,
                        "height": None,
                        "objects": _parse_yolo(
                            annotation_path, yolo_names or known, meta["width"], meta["height"]
                        ),
                    }
                )
            except DatasetError as error:
                fail("unparsable_annotation", annotation_path, str(error), image_id)
                continue
        class_name = _image_class(root, image_path, known)
        if class_name is None and annotation is not None:
            # Detection datasets without class folders: the image's class is its dominant box class.
            class_name = _dominant_box_class(annotation["objects"], known)
        if class_name is None:
            fail(
                "unknown_class",
                image_path,
                f"cannot tell the class of this image: no folder, file-name prefix or box class "
                f"matches the known classes {known}",
                image_id,
            )
            continue
        boxes: list[Box] = []
        if annotation is None:
            if not image_level_only:
                quirks.append(
                    Quirk(
                        "missing_annotation",
                        str(image_path),
                        "no annotation with this file stem",
                        image_id,
                    )
                )
        else:
            boxes = _check_annotation(
                annotation, image_path, image_id, class_name, meta, known, quirks
            )
        records.append(
            ImageRecord(
                image_id=image_id,
                class_name=class_name,
                image_path=image_path,
                annotation_path=annotation_path,
                width=meta["width"],
                height=meta["height"],
                mode=meta["mode"],
                sha256=meta["sha256"],
                pixel_hash=meta["pixel_hash"],
                boxes=boxes,
            )
        )
    for orphan in sorted({*xml_by_stem.values(), *yolo_by_stem.values()} - used_annotations):
        quirks.append(Quirk("orphan_annotation", str(orphan), "no image with this file stem"))
    _report_duplicates(records, quirks)
    return Dataset(
        root=root,
        layout=_describe_layout(root, image_files, bool(yolo_files), image_level_only),
        class_names=known,
        images=sorted(records, key=lambda r: (known.index(r.class_name), _natural_key(r.image_id))),
        quirks=quirks,
        quarantined=quarantined,
        image_level_only=image_level_only,
    )


def data_card(dataset: Dataset) -> dict:
    """A JSON-ready summary: counts, box statistics and the quirks found."""
    images = dataset.images_frame()
    boxes = dataset.boxes_frame()
    per_image = images["n_boxes"] if len(images) else pd.Series(dtype=int)
    if len(boxes):
        widths = (boxes["xmax"] - boxes["xmin"]).to_numpy()
        heights = (boxes["ymax"] - boxes["ymin"]).to_numpy()
        sizes = images.set_index("image_id").loc[boxes["image_id"], ["width", "height"]].to_numpy()
        rel_area = widths * heights / (sizes[:, 0] * sizes[:, 1])
        box_stats = {
            "n_boxes": len(boxes),
            "by_box_class": boxes["class_name"].value_counts().sort_index().to_dict(),
            "per_image": {
                "min": int(per_image.min()),
                "mean": round(float(per_image.mean()), 3),
                "max": int(per_image.max()),
            },
            "relative_area": {
                "p10": round(float(np.percentile(rel_area, 10)), 4),
                "median": round(float(np.median(rel_area)), 4),
                "p90": round(float(np.percentile(rel_area, 90)), 4),
            },
            "truncated": int(boxes["truncated"].sum()),
            "difficult": int(boxes["difficult"].sum()),
        }
    else:
        box_stats = {"n_boxes": 0}
    quirk_counts = Counter(q.kind for q in dataset.quirks)
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "image_level_only": dataset.image_level_only,
        "class_names": dataset.class_names,
        "n_images": len(images),
        "n_annotated_images": int(images["annotation_path"].notna().sum()) if len(images) else 0,
        "images_per_class": images["class_name"]
        .value_counts()
        .reindex(dataset.class_names, fill_value=0)
        .to_dict()
        if len(images)
        else {},
        "image_sizes": images.groupby(["width", "height"])
        .size()
        .rename("n")
        .reset_index()
        .to_dict("records")
        if len(images)
        else [],
        "image_modes": images["mode"].value_counts().to_dict() if len(images) else {},
        "boxes": box_stats,
        "quirks": dict(sorted(quirk_counts.items())),
        "images_with_cross_class_boxes": len(
            {q.image_id for q in dataset.quirks if q.kind == "cross_class_box"}
        ),
        "quarantined": [asdict(q) for q in dataset.quarantined],
    }


# --- internals -------------------------------------------------------------------------------


def _natural_key(text: str) -> list:
    """Sort ``crazing_2`` before ``crazing_10``."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _scan(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Images, Pascal VOC XMLs, and YOLO label files (``.txt`` inside a ``labels`` folder)."""
    images: list[Path] = []
    xmls: list[Path] = []
    yolo: list[Path] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.append(path)
        elif suffix == ANNOTATION_SUFFIX:
            xmls.append(path)
        elif suffix == ".txt" and "labels" in (
            p.lower() for p in path.relative_to(root).parts[:-1]
        ):
            yolo.append(path)
    return images, xmls, yolo


NAMES_FILES = ("classes.txt", "obj.names", "names.txt", "data.yaml", "dataset.yaml")


def yolo_class_names(root: Path) -> list[str] | None:
    """Class names of a YOLO-format dataset: a names file (one per line) or ``names`` in data.yaml."""
    for name in NAMES_FILES:
        path = root / name
        if not path.is_file():
            continue
        if path.suffix == ".yaml":
            import yaml

            names = (yaml.safe_load(path.read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names]
            continue
        lines = [line.strip() for line in path.read_text().splitlines()]
        return [line for line in lines if line]
    return None


def _parse_yolo(path: Path, names: Sequence[str], width: int, height: int) -> list[dict]:
    """YOLO ``class cx cy w h`` (normalised) lines as pixel boxes; a malformed line is an error."""
    objects = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            index = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:5])
        except (ValueError, IndexError) as error:
            raise DatasetError(f"line {number} is not 'class cx cy w h': {line!r}") from error
        if len(parts) != 5 or not 0 <= index < len(names):
            raise DatasetError(f"line {number}: class index {index} outside the {len(names)} names")
        objects.append(
            {
                "name": names[index],
                "coords": [
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                ],
                "truncated": False,
                "difficult": False,
            }
        )
    return objects


def _classes_from_folders(root: Path, image_files: Iterable[Path]) -> list[str]:
    names = sorted(
        {
            p.parent.name
            for p in image_files
            if p.parent != root and p.parent.name.lower() not in LAYOUT_FOLDERS
        }
    )
    if not names:
        raise DatasetError(
            f"cannot infer classes below {root}: put the images in one folder per class, "
            "or pass the class names"
        )
    return names


def _has_class_folders(root: Path, image_files: Iterable[Path]) -> bool:
    return any(
        p.parent != root and p.parent.name.lower() not in LAYOUT_FOLDERS for p in image_files
    )


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


def _image_class(root: Path, image_path: Path, known: Sequence[str]) -> str | None:
    lowered = {name.lower(): name for name in known}
    for folder in image_path.relative_to(root).parts[:-1][::-1]:
        if folder.lower() in lowered:
            return lowered[folder.lower()]
    stem = image_path.stem.lower()
    matches = [
        name
        for name in known
        if stem.startswith(name.lower())
        and (len(stem) == len(name) or not stem[len(name)].isalpha())
    ]
    return max(matches, key=len) if matches else None


def _dominant_box_class(objects: Sequence[dict], known: Sequence[str]) -> str | None:
    """The known class with the most boxes in an image (ties: the larger total area)."""
    lowered = {name.lower(): name for name in known}
    score: dict[str, tuple[int, float]] = {}
    for obj in objects:
        name = lowered.get(obj["name"].lower())
        if name is None:
            continue
        x1, y1, x2, y2 = obj["coords"]
        count, area = score.get(name, (0, 0.0))
        score[name] = (count + 1, area + max(0.0, x2 - x1) * max(0.0, y2 - y1))
    return max(score, key=lambda n: score[n]) if score else None


def _index_annotations(
    root: Path, xml_files: Sequence[Path], quirks: list[Quirk]
) -> dict[str, Path]:
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in xml_files:
        by_stem[path.stem.lower()].append(path)
    chosen: dict[str, Path] = {}
    for stem, paths in by_stem.items():
        chosen[stem] = paths[0]
        if len(paths) > 1:
            quirks.append(
                Quirk(
                    "duplicate_annotation",
                    str(paths[0]),
                    f"{len(paths)} XMLs share the stem {stem!r}; using {paths[0].relative_to(root)}",
                )
            )
    return chosen


def _unique_ids(root: Path, image_files: Sequence[Path], quirks: list[Quirk]) -> dict[Path, str]:
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in image_files:
        by_stem[path.stem].append(path)
    ids: dict[Path, str] = {}
    for stem, paths in by_stem.items():
        if len(paths) == 1:
            ids[paths[0]] = stem
            continue
        for path in paths:
            ids[path] = f"{stem}@{path.parent.relative_to(root).as_posix().replace('/', '__')}"
        quirks.append(
            Quirk(
                "duplicate_image_id",
                str(paths[0]),
                f"{len(paths)} images share the stem {stem!r}; ids made unique with their folder",
                stem,
            )
        )
    return ids


def _read_image(path: Path) -> dict:
    data = path.read_bytes()
    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image.convert("RGB"))
            mode = image.mode
            if (
                mode == "RGB"
                and np.array_equal(pixels[..., 0], pixels[..., 1])
                and np.array_equal(pixels[..., 1], pixels[..., 2])
            ):
                mode = "RGB(grey)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"corrupt or unreadable image: {error}") from error
    height, width = pixels.shape[:2]
    pixel_digest = hashlib.sha256(f"{width}x{height}".encode() + pixels.tobytes()).hexdigest()
    return {
        "width": int(width),
        "height": int(height),
        "mode": mode,
        "sha256": hashlib.sha256(data).hexdigest(),
        "pixel_hash": pixel_digest,
    }


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


def _check_annotation(
    annotation: dict,
    image_path: Path,
    image_id: str,
    image_class: str,
    meta: dict,
    known: Sequence[str],
    quirks: list[Quirk],
) -> list[Box]:
    where = str(image_path)
    if annotation["filename"] and annotation["filename"] != image_path.name:
        detail = (
            "<filename> lacks the extension"
            if annotation["filename"] == image_path.stem
            else f"<filename> is {annotation['filename']!r}, the image is {image_path.name!r}"
        )
        quirks.append(Quirk("mismatched_filename", where, detail, image_id))
    if (
        annotation["width"]
        and annotation["height"]
        and (
            int(annotation["width"]) != meta["width"] or int(annotation["height"]) != meta["height"]
        )
    ):
        quirks.append(
            Quirk(
                "size_mismatch",
                where,
                f"XML says {annotation['width']:.0f}x{annotation['height']:.0f}, "
                f"image is {meta['width']}x{meta['height']}; boxes kept in image pixels",
                image_id,
            )
        )
    lowered = {name.lower(): name for name in known}
    boxes: list[Box] = []
    for obj in annotation["objects"]:
        name = lowered.get(obj["name"].lower(), obj["name"])
        xmin, ymin, xmax, ymax = obj["coords"]
        clipped = (
            max(0.0, xmin),
            max(0.0, ymin),
            min(float(meta["width"]), xmax),
            min(float(meta["height"]), ymax),
        )
        if clipped != (xmin, ymin, xmax, ymax):
            quirks.append(
                Quirk("box_clipped", where, f"box {obj['coords']} clipped to the image", image_id)
            )
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            quirks.append(
                Quirk(
                    "degenerate_box", where, f"box {obj['coords']} has no area; not used", image_id
                )
            )
            continue
        if name not in known:
            quirks.append(
                Quirk(
                    "unknown_box_class",
                    where,
                    f"box class {name!r} is not a known class; kept in the card, not exported",
                    image_id,
                )
            )
        elif name != image_class:
            quirks.append(
                Quirk(
                    "cross_class_box", where, f"{name!r} box in a {image_class!r} image", image_id
                )
            )
        boxes.append(Box(name, *clipped, truncated=obj["truncated"], difficult=obj["difficult"]))
    if annotation["objects"] and not any(b.class_name == image_class for b in boxes):
        quirks.append(
            Quirk(
                "no_own_class_box", where, f"no box of the image's class {image_class!r}", image_id
            )
        )
    return boxes


def _report_duplicates(records: Sequence[ImageRecord], quirks: list[Quirk]) -> None:
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.pixel_hash].append(record)
    for members in groups.values():
        if len(members) < 2:
            continue
        ids = sorted(m.image_id for m in members)
        same_bytes = len({m.sha256 for m in members}) == 1
        for member in members:
            quirks.append(
                Quirk(
                    "duplicate_image",
                    str(member.image_path),
                    f"pixel-identical{' (byte-identical)' if same_bytes else ''} to "
                    f"{', '.join(i for i in ids if i != member.image_id)}; kept in one split",
                    member.image_id,
                )
            )


def _describe_layout(
    root: Path, image_files: Sequence[Path], yolo: bool = False, image_level_only: bool = False
) -> str:
    if yolo:
        return "YOLO txt labels + names file"
    if image_level_only:
        return "class subfolders (image-level labels only)"
    folders = {p.parent.relative_to(root).as_posix() for p in image_files}
    lowered = {f.lower() for f in folders}
    if any(f.split("/")[-1] == "images" and "/" not in f for f in lowered) or "images" in lowered:
        extra = " + Validation_Images" if any("validation_images" in f for f in lowered) else ""
        return f"flat IMAGES/ + ANNOTATIONS/{extra}"
    if any(f.startswith(("train/", "validation/", "valid/", "val/")) for f in lowered):
        return "kaggle train|validation/images/<class>/ + annotations/"
    if folders == {"."}:
        return "flat folder (class from file-name prefix)"
    return "class subfolders"
