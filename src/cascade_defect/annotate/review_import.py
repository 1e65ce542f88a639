"""Read a reviewed export back: the review CSV, a Label Studio JSON export, or a COCO file.

A person corrects the audit's review export (:mod:`cascade_defect.annotate.review_export`) in a
spreadsheet, in Label Studio or in a COCO tool; this module turns the file into one
:class:`Review` per image the person touched, after checking *every* row or record against the
run: the image must be a pool image, every class one of the run's (``no_defect`` allowed for an
image), every box inside its image with an area. Any problem raises :class:`ReviewImportError`,
which names the file and each row or record at fault; nothing is applied then
(:mod:`cascade_defect.annotate.reviewed` writes only a fully valid file).

What each format says, and what it leaves alone:

- **CSV** (``disagreements.csv``): ``image_id`` plus ``corrected_class`` and/or
  ``corrected_boxes`` (box notation of :func:`~cascade_defect.annotate.review_export.
  parse_box_list`, pixels; ``none`` = no box) and an optional ``reviewed_at`` (ISO 8601). A row
  with both cells empty was not reviewed. Read with the ``csv`` module, every cell as text, so
  ids stay as written and a row with a wrong number of fields is reported with its line.
- **Label Studio** (the project's JSON export: a list of tasks): the latest submitted annotation
  of each task (by ``updated_at``, then ``created_at``, then position) counts; cancelled
  (skipped) annotations and tasks without one are not reviewed. ``rectanglelabels`` results
  (percent of the image) replace the boxes; a ``choices`` result sets the class; a choice alone
  keeps the boxes. Rotated rectangles are refused (YOLO boxes are upright).
- **COCO**: every image listed is reviewed; its annotations (``bbox`` = ``[x, y, w, h]`` pixels)
  replace its boxes. Images are matched by ``image_key`` (the export's) or the ``file_name``
  stem; the class is the image's ``defect_class`` field, else its boxes' most common class.

Without a corrected class, the image's class is its new boxes' most common class (the first
box's on a tie), or the pseudo-label's when the boxes are kept.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import unquote

from cascade_defect.annotate.review_export import CORRECTION_COLUMNS, parse_box_list
from cascade_defect.annotate.schema import NO_DEFECT
from cascade_defect.data.tables import read_table
from cascade_defect.hashing import sha256_file

ReviewFormat = Literal["csv", "label-studio", "coco"]
REVIEW_FORMATS: tuple[str, ...] = get_args(ReviewFormat)
BOX_TOLERANCE_PX = 0.02
"""How far (pixels) a box may poke out of its image: the exports round coordinates."""
_MAX_SHOWN = 20


class ReviewImportError(ValueError):
    """A review file that cannot be applied; the message names the file and every place at fault."""

    def __init__(self, path: str | os.PathLike[str], problems: Sequence[str]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:_MAX_SHOWN])
        more = len(self.problems) - _MAX_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{self.path}: {len(self.problems)} problem(s), nothing was imported:\n  {shown}{tail}"
        )


@dataclass(frozen=True)
class ReviewedBox:
    """A box a person drew or kept: class and normalised corners."""

    class_name: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Review:
    """One image a person reviewed: ``None`` for what the file leaves as it was."""

    image_id: str
    record: str  # where in the file: "row 3 (line 4)", "task 7, annotation 12", "image id 3"
    defect_class: str | None
    boxes: tuple[ReviewedBox, ...] | None
    reviewed_at: str | None = None


@dataclass(frozen=True)
class ReviewTarget:
    """What a review may name: the run's classes and its pool images with their sizes."""

    class_names: tuple[str, ...]
    sizes: Mapping[str, tuple[int, int]]

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str]) -> ReviewTarget:
        """The classes and pool listing chapter 02 wrote under ``run_dir``."""
        split = Path(run_dir) / "02_split"
        classes, pool = split / "classes.json", split / "pool.csv"
        for path in (classes, pool):
            if not path.exists():
                raise FileNotFoundError(f"{path} not found: run notebook 02 (split) first")
        names = tuple(json.loads(classes.read_text())["class_names"])
        listing = read_table(pool)
        sizes = {
            str(i): (int(w), int(h))
            for i, w, h in zip(
                listing["image_id"], listing["width"], listing["height"], strict=True
            )
        }
        return cls(names, sizes)


@dataclass(frozen=True)
class ReviewFile:
    """A validated review file: every review in it, and how many entries were not reviewed."""

    path: Path
    format: str
    sha256: str
    reviews: tuple[Review, ...]
    n_not_reviewed: int


@dataclass
class _Checker:
    """Collects problems while a file is read, so all of them are reported at once."""

    target: ReviewTarget
    problems: list[str] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def image(self, where: str, image_id: object) -> str | None:
        if not isinstance(image_id, str | int) or isinstance(image_id, bool) or not str(image_id):
            self.fail(where, f"malformed image id {image_id!r}")
            return None
        key = str(image_id)
        if key not in self.target.sizes:
            self.fail(where, f"unknown image {key!r} (not in this run's pool)")
            return None
        if key in self.seen:
            self.fail(where, f"image {key!r} is reviewed twice (also at {self.seen[key]})")
            return None
        self.seen[key] = where
        return key

    def image_class(self, where: str, name: object) -> str | None:
        allowed = (*self.target.class_names, NO_DEFECT)
        if not isinstance(name, str) or name not in allowed:
            self.fail(where, f"unknown class {name!r} (classes: {', '.join(allowed)})")
            return None
        return name

    def box(
        self, where: str, image_id: str, class_name: object, xywh: Sequence[object]
    ) -> ReviewedBox | None:
        """A pixel box ``[x, y, w, h]`` checked against the image and normalised."""
        width, height = self.target.sizes[image_id]
        ok = True
        if not isinstance(class_name, str) or class_name not in self.target.class_names:
            self.fail(
                where,
                f"unknown class {class_name!r} (box classes: {', '.join(self.target.class_names)})",
            )
            ok = False
        numbers = [v for v in xywh if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(xywh) != 4 or len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
            self.fail(where, f"malformed box {list(xywh)!r}: expected four numbers x, y, w, h")
            return None
        x, y, w, h = (float(v) for v in numbers)
        if w <= 0 or h <= 0:
            self.fail(where, f"box ({x:g}, {y:g}, {w:g}, {h:g}) has no area")
            return None
        tol = BOX_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            self.fail(
                where,
                f"box ({x:g}, {y:g}, {w:g}, {h:g}) lies outside the {width}x{height} image "
                f"{image_id!r}",
            )
            return None
        if not ok:
            return None
        return ReviewedBox(
            str(class_name),
            max(0.0, x / width),
            max(0.0, y / height),
            min(1.0, (x + w) / width),
            min(1.0, (y + h) / height),
        )

    def timestamp(self, where: str, value: object) -> str | None:
        if value is None or value == "":
            return None
        try:
            datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(where, f"malformed timestamp {value!r} (expected ISO 8601)")
            return None
        return str(value)

    def size(self, where: str, image_id: str, width: object, height: object) -> None:
        """A size the file states must be the pool image's (else its boxes are in another scale)."""
        if width is None and height is None:
            return
        if (width, height) != self.target.sizes[image_id]:
            w, h = self.target.sizes[image_id]
            self.fail(where, f"size {width}x{height} differs from the pool image's {w}x{h}")

    def review(
        self,
        where: str,
        image_id: str,
        defect_class: str | None,
        boxes: list[ReviewedBox] | None,
        reviewed_at: str | None,
    ) -> Review | None:
        if defect_class is None and boxes:
            defect_class = Counter(b.class_name for b in boxes).most_common(1)[0][0]
        if defect_class == NO_DEFECT and boxes:
            self.fail(where, f"class {NO_DEFECT!r} with {len(boxes)} box(es): remove one of them")
            return None
        if defect_class == NO_DEFECT:
            boxes = []
        return Review(
            image_id, where, defect_class, None if boxes is None else tuple(boxes), reviewed_at
        )


def detect_format(path: str | os.PathLike[str]) -> str:
    """``csv`` by extension; for JSON, ``label-studio`` for a list of tasks, ``coco`` for an
    object with ``images`` and ``annotations``."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return "csv"
    try:
        payload = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ReviewImportError(path, [f"not a CSV (by its name) and not JSON: {error}"]) from None
    if isinstance(payload, list):
        return "label-studio"
    if isinstance(payload, dict) and {"images", "annotations"} <= set(payload):
        return "coco"
    raise ReviewImportError(
        path,
        [
            "JSON that is neither a Label Studio export (a list of tasks) nor COCO "
            "(an object with 'images' and 'annotations'); name the format with --format"
        ],
    )


def read_review_file(
    path: str | os.PathLike[str], target: ReviewTarget, fmt: str | None = None
) -> ReviewFile:
    """Every review in ``path``, checked against ``target``; raises :class:`ReviewImportError`."""
    path = Path(path)
    if not path.is_file():
        raise ReviewImportError(path, ["file not found"])
    fmt = fmt or detect_format(path)
    if fmt not in REVIEW_FORMATS:
        raise ValueError(f"unknown review format {fmt!r}; known: {list(REVIEW_FORMATS)}")
    checker = _Checker(target)
    if fmt == "csv":
        reviews, skipped = _csv_reviews(path, checker)
    else:
        try:
            payload = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as error:
            raise ReviewImportError(path, [f"not valid JSON: {error}"]) from None
        if fmt == "label-studio":
            reviews, skipped = _read_label_studio(payload, checker)
        else:
            reviews, skipped = _read_coco(payload, checker)
    if checker.problems:
        raise ReviewImportError(path, checker.problems)
    return ReviewFile(path, fmt, sha256_file(path), tuple(reviews), skipped)


def _all_valid(boxes: list[ReviewedBox | None] | None) -> list[ReviewedBox] | None:
    """The boxes when every one passed its checks; None when any failed (or there were none)."""
    if boxes is None or any(box is None for box in boxes):
        return None
    return [box for box in boxes if box is not None]


def _number(value: object) -> float:
    """A JSON number as float; anything else is NaN, which every check then refuses."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return math.nan


# --------------------------------------------------------------------------- CSV


def _csv_records(path: Path) -> Iterator[tuple[int, int, list[str]]]:
    """``(row number, first line, fields)`` of each non-empty data row."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        line = 0
        for number, record in enumerate(reader):
            start, line = line + 1, reader.line_num
            if number and record:
                yield number, start, record


def _csv_reviews(path: Path, checker: _Checker) -> tuple[list[Review], int]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
        records = list(_csv_records(path))
    except (csv.Error, UnicodeDecodeError) as error:
        raise ReviewImportError(path, [f"not a readable CSV: {error}"]) from None
    if "image_id" not in header:
        raise ReviewImportError(path, ["no image_id column"])
    if not set(CORRECTION_COLUMNS) & set(header):
        raise ReviewImportError(
            path, [f"neither of the columns {list(CORRECTION_COLUMNS)} (see the review README)"]
        )
    reviews, skipped = [], 0
    for number, line, record in records:
        where = f"row {number} (line {line})"
        if len(record) != len(header):
            checker.fail(
                where, f"malformed row: {len(record)} fields, the header has {len(header)}"
            )
            continue
        row = dict(zip(header, record, strict=True))
        corrected_class = row.get("corrected_class", "").strip()
        corrected_boxes = row.get("corrected_boxes", "").strip()
        if not corrected_class and not corrected_boxes:
            skipped += 1
            continue
        image_id = checker.image(where, row["image_id"].strip())
        if image_id is None:
            continue
        defect_class = checker.image_class(where, corrected_class) if corrected_class else None
        boxes = None
        if corrected_boxes:
            try:
                parsed = parse_box_list(corrected_boxes)
            except ValueError as error:
                checker.fail(where, f"malformed corrected_boxes: {error}")
                continue
            boxes = [
                checker.box(f"{where}, box {i}", image_id, name, xywh)
                for i, (name, xywh) in enumerate(parsed, start=1)
            ]
        when = checker.timestamp(where, row.get("reviewed_at", "").strip())
        valid = _all_valid(boxes)
        if (corrected_class and defect_class is None) or (boxes is not None and valid is None):
            continue
        review = checker.review(where, image_id, defect_class, valid, when)
        if review is not None:
            reviews.append(review)
    return reviews, skipped


# --------------------------------------------------------------------------- Label Studio


def _ls_image_id(data: Mapping[str, Any]) -> object:
    if "image_id" in data:
        return data["image_id"]
    url = data.get("image")
    if not isinstance(url, str) or not url:
        return None
    return Path(unquote(url.split("?d=")[-1].split("?")[0])).stem


def _latest(annotations: list[dict]) -> dict:
    def key(item: tuple[int, dict]) -> tuple[str, int]:
        index, annotation = item
        return str(annotation.get("updated_at") or annotation.get("created_at") or ""), index

    return max(enumerate(annotations), key=key)[1]


def _read_label_studio(payload: object, checker: _Checker) -> tuple[list[Review], int]:
    if not isinstance(payload, list):
        checker.fail("file", "a Label Studio JSON export is a list of tasks")
        return [], 0
    reviews, skipped = [], 0
    for index, task in enumerate(payload, start=1):
        task_id = task.get("id", f"#{index}") if isinstance(task, dict) else f"#{index}"
        where = f"task {task_id}"
        data = task.get("data") if isinstance(task, dict) else None
        annotations = (
            task.get("annotations", task.get("completions")) if isinstance(task, dict) else None
        )
        if not isinstance(data, dict) or not isinstance(annotations, list | type(None)):
            checker.fail(where, "malformed task: expected 'data' and an 'annotations' list")
            continue
        if any(not isinstance(a, dict) for a in annotations or []):
            checker.fail(where, "malformed task: an annotation is not an object")
            continue
        live = [a for a in annotations or [] if not a.get("was_cancelled")]
        if not live:
            skipped += 1
            continue
        image_id = checker.image(where, _ls_image_id(data))
        if image_id is None:
            continue
        annotation = _latest(live)
        where = f"task {task_id}, annotation {annotation.get('id', '?')}"
        review = _ls_review(where, image_id, annotation, checker)
        if review is not None:
            reviews.append(review)
    return reviews, skipped


def _ls_review(where: str, image_id: str, annotation: dict, checker: _Checker) -> Review | None:
    result = annotation.get("result")
    if not isinstance(result, list):
        checker.fail(where, "malformed annotation: 'result' is not a list")
        return None
    width, height = checker.target.sizes[image_id]
    choices: list[str] = []
    boxes: list[ReviewedBox | None] = []
    n_problems = len(checker.problems)
    for number, region in enumerate(result, start=1):
        place = (
            f"{where}, result {region.get('id', number) if isinstance(region, dict) else number}"
        )
        value = region.get("value") if isinstance(region, dict) else None
        if not isinstance(value, dict):
            checker.fail(place, "malformed result: no 'value' object")
            continue
        if region.get("type") == "choices":
            picked = value.get("choices")
            if not isinstance(picked, list) or len(picked) != 1:
                checker.fail(place, f"malformed choices {picked!r}: expected one class")
            elif checker.image_class(place, picked[0]) is not None:
                choices.append(picked[0])
        elif region.get("type") == "rectanglelabels":
            labels = value.get("rectanglelabels")
            if not isinstance(labels, list) or len(labels) != 1:
                checker.fail(place, f"malformed rectanglelabels {labels!r}: expected one label")
                continue
            if not abs(_number(value.get("rotation") or 0)) <= 1e-6:
                checker.fail(place, f"rotated box ({value.get('rotation')} deg): draw it upright")
                continue
            checker.size(
                place, image_id, region.get("original_width"), region.get("original_height")
            )
            xywh: list[object] = [value.get(k) for k in ("x", "y", "width", "height")]
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in xywh):
                scale = (width, height, width, height)
                xywh = [_number(v) * s / 100.0 for v, s in zip(xywh, scale, strict=True)]
            boxes.append(checker.box(place, image_id, labels[0], xywh))
    if len(set(choices)) > 1:
        checker.fail(where, f"several classes chosen: {sorted(set(choices))}")
    if not choices and not boxes and len(checker.problems) == n_problems:
        checker.fail(
            where, "neither a class nor a box: choose a class, draw boxes, or skip the task"
        )
    if len(checker.problems) > n_problems:
        return None
    when = checker.timestamp(where, annotation.get("updated_at") or annotation.get("created_at"))
    return checker.review(
        where, image_id, choices[0] if choices else None, _all_valid(boxes) or None, when
    )


# --------------------------------------------------------------------------- COCO


def _read_coco(payload: object, checker: _Checker) -> tuple[list[Review], int]:
    parts = (
        {k: payload.get(k) for k in ("images", "annotations", "categories")}
        if isinstance(payload, dict)
        else {}
    )
    if not parts or not all(isinstance(v, list) for v in parts.values()):
        checker.fail("file", "COCO needs 'images', 'annotations' and 'categories' lists")
        return [], 0
    assert isinstance(payload, dict)
    categories = {}
    for category in parts["categories"]:
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            checker.fail("categories", f"malformed category {category!r}")
            continue
        categories[category["id"]] = category["name"]
    images: dict[object, tuple[str, str, object]] = {}
    for entry in parts["images"]:
        where = f"image id {entry.get('id') if isinstance(entry, dict) else entry!r}"
        if not isinstance(entry, dict) or "id" not in entry:
            checker.fail(where, "malformed image entry: no 'id'")
            continue
        key = entry.get("image_key", Path(str(entry.get("file_name", ""))).stem or None)
        image_id = checker.image(where, key)
        if image_id is None:
            continue
        checker.size(where, image_id, entry.get("width"), entry.get("height"))
        images[entry["id"]] = (image_id, where, entry.get("defect_class"))
    boxes: dict[object, list[ReviewedBox | None]] = {k: [] for k in images}
    for annotation in parts["annotations"]:
        ident = annotation.get("id", "?") if isinstance(annotation, dict) else "?"
        where = f"annotation id {ident}"
        if not isinstance(annotation, dict):
            checker.fail(where, f"malformed annotation {annotation!r}")
            continue
        image = annotation.get("image_id")
        if image not in images:
            if image is None or image not in {
                e.get("id") for e in parts["images"] if isinstance(e, dict)
            }:
                checker.fail(where, f"image id {image!r} is not in 'images'")
            continue  # its image was reported already
        if annotation.get("category_id") not in categories:
            checker.fail(
                where, f"category id {annotation.get('category_id')!r} is not in 'categories'"
            )
            continue
        bbox = annotation.get("bbox")
        bbox = bbox if isinstance(bbox, list) else [bbox]
        name = categories[annotation["category_id"]]
        boxes[image].append(checker.box(where, images[image][0], name, bbox))
    info = payload.get("info") if isinstance(payload.get("info"), dict) else {}
    when = checker.timestamp("info", info.get("date_created"))
    reviews = []
    for key, (image_id, where, given) in images.items():
        found = boxes[key]
        defect_class = checker.image_class(where, given) if given is not None else None
        if not found and given is None:
            checker.fail(where, "no annotations and no 'defect_class': say which class it is")
            continue
        valid = _all_valid(found)
        if valid is None or (given is not None and defect_class is None):
            continue
        review = checker.review(where, image_id, defect_class, valid, when)
        if review is not None:
            reviews.append(review)
    return reviews, 0
