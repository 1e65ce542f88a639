"""YOLO txt labels and names files, for users who bring their own data in that format.

It turns normalised ``class cx cy w h`` lines back into pixel boxes, so such a dataset enters the
study through the same records as NEU-DET's Pascal VOC.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cascade_defect.data.records import DatasetError

NAMES_FILES = ("classes.txt", "obj.names", "names.txt", "data.yaml", "dataset.yaml")


def yolo_line(class_id: int, cx: float, cy: float, width: float, height: float) -> str:
    """One normalised ``class cx cy w h`` label line, at the precision every writer here uses."""
    return f"{class_id} {cx:.6f} {cy:.6f} {width:.6f} {height:.6f}"


def write_label_file(path: Path, lines: Sequence[str]) -> None:
    """A YOLO label file; an image without boxes gets an empty file (a background image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def write_data_yaml(
    folder: Path, class_names: Sequence[str], train: str = "images", val: str = "images"
) -> Path:
    """The ultralytics dataset file of ``folder`` (``train``/``val`` are relative to it)."""
    import yaml

    path = folder / "data.yaml"
    payload = {
        "path": str(folder.resolve()),
        "train": train,
        "val": val,
        "names": dict(enumerate(class_names)),
    }
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


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
