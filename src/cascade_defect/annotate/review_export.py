"""Export the audit's disagreements for a person to review in a standard tool.

Three views of the same images: a CSV (one row per image: truth, answer, confidence, reasoning),
COCO detection JSON (``coco_ground_truth.json`` and ``coco_pseudo.json`` share image ids and
categories, so any COCO viewer can overlay them) and a Label Studio import file whose tasks carry
the pseudo-labels and the ground truth as two predictions a reviewer can switch between.

Image locations:

- **COCO** ``file_name`` is relative to the export folder by default (the folder moves with the
  run folder), or absolute with ``absolute_paths=True``.
- **Label Studio** ``data.image`` is a local-files URL, ``/data/local-files/?d=<path relative to
  document_root>``: start Label Studio with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
  ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<document_root>`` (the audit passes the work folder).
  Pass ``image_url_prefix`` to point at images served over HTTP instead.

The CSV carries the reviewer's corrections back: ``corrected_class`` and ``corrected_boxes`` start
empty beside ``pseudo_boxes`` (the boxes shown, in the same notation, ready to copy and edit), and
``cascade-defect review import`` reads the file back (:mod:`cascade_defect.annotate.review_import`).
A box list is ``class x y w h`` in pixels (top-left corner and size, as COCO writes them), boxes
separated by ``;``; a class name may hold spaces (the last four numbers are the box).

:func:`review_order` is the one definition of the order a reviewer sees the pool in; the export's
rows and the budget benchmark's ``audit`` order both come from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from cascade_defect.annotate.schema import NO_DEFECT

logger = logging.getLogger(__name__)

STRATEGY_PREFERENCE = ("annotator", "seed_detector", "whole_image")
"""Box strategy shown to reviewers when none is named: the annotator's own boxes first."""
LOCAL_FILES_PREFIX = "/data/local-files/?d="
GROUND_TRUTH_VERSION = "ground_truth"
_COORD_DECIMALS = 2
_PERCENT_DECIMALS = 4
CORRECTION_COLUMNS = ("corrected_class", "corrected_boxes")
"""The CSV columns a reviewer fills in (empty: the row was not reviewed)."""
NO_BOXES = "none"
"""``corrected_boxes`` value for "this image has no box" (an empty cell keeps the boxes)."""
BOX_SEPARATOR = ";"


def review_order(images: pd.DataFrame) -> pd.DataFrame:
    """The audit's image table (``image_id, answered, correct, confidence``) in review order.

    First the disagreements, the most confident first (a confident wrong answer is the costliest:
    no confidence threshold filters it out), then the images without an answer, then the right
    answers, the least confident first; ties by image id. The export lists the disagreements in
    this order and the review budget's ``audit`` order walks the whole table in it.
    """
    answered = _flag(images["answered"])
    wrong = answered & ~_flag(images["correct"])
    confidence = pd.to_numeric(images["confidence"], errors="coerce").to_numpy(dtype=float)
    ranked = images.assign(
        _rank=np.select([wrong, ~answered], [0, 1], 2),
        _key=np.where(wrong, -confidence, confidence),
        _id=images["image_id"].astype(str),
    )
    ranked = ranked.sort_values(["_rank", "_key", "_id"], kind="stable", na_position="last")
    return ranked.drop(columns=["_rank", "_key", "_id"])


def _flag(column: pd.Series) -> np.ndarray:
    """A boolean column, also when read back from a CSV as text ("True"/"False")."""
    if column.dtype == bool:
        return column.to_numpy()
    return column.astype(str).str.strip().str.lower().isin(["true", "1"]).to_numpy()


def format_box_list(boxes: pd.DataFrame, width: int, height: int) -> str:
    """Normalised corner boxes (``class_name, x1, y1, x2, y2``) in the CSV's box notation."""
    items = []
    for row in boxes.itertuples(index=False):
        x, y, w, h = pixel_bbox(row.x1, row.y1, row.x2, row.y2, width, height)
        items.append(f"{row.class_name} {x:g} {y:g} {w:g} {h:g}")
    return f"{BOX_SEPARATOR} ".join(items)


def parse_box_list(text: str) -> list[tuple[str, tuple[float, float, float, float]]]:
    """The CSV's box notation back to ``(class_name, (x, y, w, h))`` in pixels.

    ``none`` is an empty list; a malformed item raises ``ValueError`` saying which one.
    """
    if text.strip().lower() == NO_BOXES:
        return []
    boxes = []
    for number, item in enumerate(text.split(BOX_SEPARATOR), start=1):
        tokens = item.split()
        if not tokens:
            continue
        try:
            values = tuple(float(v) for v in tokens[-4:])
        except ValueError:
            values = ()
        if len(tokens) < 5 or len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(
                f"box {number} {item.strip()!r} is not 'class x y w h' (pixels, four numbers)"
            )
        boxes.append((" ".join(tokens[:-4]), values))
    return boxes


def choose_review_strategy(strategies: Iterable[str], preferred: str | None = None) -> str | None:
    """The box strategy to export: ``preferred`` if present, else the first of the preference order."""
    present = [str(s) for s in strategies]
    if preferred is not None:
        if preferred not in present:
            raise ValueError(
                f"box strategy {preferred!r} not in the pseudo-boxes ({sorted(present)})"
            )
        return preferred
    for name in STRATEGY_PREFERENCE:
        if name in present:
            return name
    return sorted(present)[0] if present else None


def coco_categories(class_names: Sequence[str]) -> list[dict]:
    """COCO categories, ids from 1 in class order (0 is reserved by many COCO tools)."""
    return [
        {"id": i, "name": name, "supercategory": "defect"}
        for i, name in enumerate(class_names, start=1)
    ]


def pixel_bbox(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> list[float]:
    """Normalised corners to COCO's ``[x, y, w, h]`` in pixels (top-left corner, size)."""
    left, top = x1 * width, y1 * height
    return [
        round(left, _COORD_DECIMALS),
        round(top, _COORD_DECIMALS),
        round(x2 * width - left, _COORD_DECIMALS),
        round(y2 * height - top, _COORD_DECIMALS),
    ]


def coco_dataset(
    images: pd.DataFrame,
    boxes: pd.DataFrame,
    class_names: Sequence[str],
    *,
    source: str,
    description: str = "",
) -> dict:
    """A COCO detection dataset for ``images`` (``image_id, file_name, width, height``).

    ``boxes`` are normalised ``x1, y1, x2, y2`` with ``class_name`` (and optionally
    ``confidence``, written as ``score``, and ``strategy``). Every annotation carries
    ``source`` (``ground_truth`` or ``pseudo``) so merged files stay tellable apart. Boxes of
    unknown classes or of images not listed are left out with a warning.
    """
    categories = coco_categories(class_names)
    category_id = {c["name"]: c["id"] for c in categories}
    coco_images = []
    image_index: dict[str, dict] = {}
    for number, row in enumerate(images.itertuples(index=False), start=1):
        entry = {
            "id": number,
            "file_name": str(row.file_name),
            "width": int(row.width),
            "height": int(row.height),
            "image_key": str(row.image_id),
        }
        coco_images.append(entry)
        image_index[str(row.image_id)] = entry
    annotations = []
    skipped = 0
    for row in boxes.itertuples(index=False):
        image = image_index.get(str(row.image_id))
        if image is None or row.class_name not in category_id:
            skipped += 1
            continue
        bbox = pixel_bbox(row.x1, row.y1, row.x2, row.y2, image["width"], image["height"])
        annotation: dict = {
            "id": len(annotations) + 1,
            "image_id": image["id"],
            "category_id": category_id[row.class_name],
            "bbox": bbox,
            "area": round(bbox[2] * bbox[3], _COORD_DECIMALS),
            "iscrowd": 0,
            "source": source,
        }
        score = getattr(row, "confidence", None)
        if score is not None and not _is_nan(score):
            annotation["score"] = float(score)
        strategy = getattr(row, "strategy", None)
        if strategy is not None and not _is_nan(strategy):
            annotation["strategy"] = str(strategy)
        annotations.append(annotation)
    if skipped:
        logger.warning(
            "COCO export (%s) left out %d boxes of unknown images or classes", source, skipped
        )
    return {
        "info": {"description": description or f"{source} boxes", "version": "1.0"},
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": categories,
    }


def rectangle_result(
    region_id: str, class_name: str, box: Sequence[float], width: int, height: int
) -> dict:
    """A Label Studio ``rectanglelabels`` region: coordinates in percent of the image size."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return {
        "id": region_id,
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {
            "x": round(100.0 * x1, _PERCENT_DECIMALS),
            "y": round(100.0 * y1, _PERCENT_DECIMALS),
            "width": round(100.0 * (x2 - x1), _PERCENT_DECIMALS),
            "height": round(100.0 * (y2 - y1), _PERCENT_DECIMALS),
            "rotation": 0,
            "rectanglelabels": [class_name],
        },
    }


def _choice_result(region_id: str, class_name: str) -> dict:
    return {
        "id": region_id,
        "type": "choices",
        "from_name": "defect_class",
        "to_name": "image",
        "value": {"choices": [class_name]},
    }


def label_studio_image_url(
    path: str | os.PathLike[str], document_root: Path | None, image_url_prefix: str | None = None
) -> str:
    """Where Label Studio fetches an image (see the module docstring for the server settings).

    With ``image_url_prefix`` the image is expected at ``<prefix>/<file name>``; without a
    ``document_root`` an absolute ``file://`` URL is written (viewable, but Label Studio's web
    app will not load it).
    """
    path = Path(path)
    if image_url_prefix is not None:
        return image_url_prefix.rstrip("/") + "/" + quote(path.name)
    if document_root is None:
        return path.resolve().as_uri()
    relative = os.path.relpath(path.resolve(), Path(document_root).resolve())
    return LOCAL_FILES_PREFIX + quote(Path(relative).as_posix(), safe="/")


def label_studio_tasks(
    items: pd.DataFrame,
    gt_boxes: pd.DataFrame,
    pseudo_boxes: pd.DataFrame,
    *,
    model_version: str,
) -> list[dict]:
    """Label Studio tasks, one per item: the pseudo-label and the ground truth as predictions.

    ``items`` needs ``image_id, image, width, height, true_class, predicted, confidence`` (and
    optionally ``reasoning``); boxes are normalised corners with ``class_name``. Each
    prediction holds the image-level class (a ``choices`` result) and the boxes
    (``rectanglelabels`` results in percent).
    """
    gt_by_image = {k: g for k, g in gt_boxes.groupby("image_id")} if len(gt_boxes) else {}
    pr_by_image = {k: g for k, g in pseudo_boxes.groupby("image_id")} if len(pseudo_boxes) else {}
    tasks = []
    for item in items.itertuples(index=False):
        image_id = str(item.image_id)
        width, height = int(item.width), int(item.height)
        confidence = None if _is_nan(item.confidence) else float(item.confidence)
        predicted = None if _is_nan(item.predicted) else str(item.predicted)

        pseudo_result = _regions(pr_by_image.get(image_id), image_id, "p", width, height)
        if predicted is not None:
            pseudo_result.insert(0, _choice_result(f"{image_id}-pc", predicted))
        truth_result = [
            _choice_result(f"{image_id}-gc", str(item.true_class)),
            *_regions(gt_by_image.get(image_id), image_id, "g", width, height),
        ]
        reasoning = getattr(item, "reasoning", None)
        tasks.append(
            {
                "data": {
                    "image": str(item.image),
                    "image_id": image_id,
                    "true_class": str(item.true_class),
                    "predicted_class": predicted,
                    "confidence": confidence,
                    "reasoning": None if _is_nan(reasoning) else str(reasoning),
                },
                "predictions": [
                    {"model_version": model_version, "score": confidence, "result": pseudo_result},
                    {"model_version": GROUND_TRUTH_VERSION, "result": truth_result},
                ],
            }
        )
    return tasks


def _regions(
    frame: pd.DataFrame | None, image_id: str, tag: str, width: int, height: int
) -> list[dict]:
    if frame is None:
        return []
    return [
        rectangle_result(
            f"{image_id}-{tag}{k}",
            str(row.class_name),
            (row.x1, row.y1, row.x2, row.y2),
            width,
            height,
        )
        for k, row in enumerate(frame.itertuples(index=False))
    ]


def label_studio_config(class_names: Sequence[str]) -> str:
    """The labelling interface the tasks are written for (paste it into the project's settings)."""
    labels = "\n".join(f'    <Label value="{name}"/>' for name in class_names)
    choices = "\n".join(f'    <Choice value="{name}"/>' for name in [*class_names, NO_DEFECT])
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        '  <RectangleLabels name="label" toName="image">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        '  <Choices name="defect_class" toName="image" choice="single">\n'
        f"{choices}\n"
        "  </Choices>\n"
        '  <Text name="reasoning" value="$reasoning"/>\n'
        "</View>\n"
    )


def write_review_export(
    out_dir: Path,
    items: pd.DataFrame,
    pool: pd.DataFrame,
    gt_boxes: pd.DataFrame,
    pseudo_boxes: pd.DataFrame,
    class_names: Sequence[str],
    *,
    document_root: Path | None = None,
    absolute_paths: bool = False,
    image_url_prefix: str | None = None,
) -> dict[str, Path]:
    """Write the review files for ``items`` (the disagreements) and return their paths.

    ``pool`` gives each image's ``path``, ``width`` and ``height``; ``pseudo_boxes`` should hold
    one box strategy (the reviewer sees exactly those boxes). The folder is rewritten whole.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*"):
        if stale.is_file():
            stale.unlink()
    sizes = pool.set_index("image_id")[["path", "width", "height"]]
    missing = set(items["image_id"]) - set(sizes.index)
    if missing:
        raise ValueError(
            f"{len(missing)} review images are not in the pool, e.g. {sorted(missing)[0]}"
        )
    frame = items.join(sizes, on="image_id")
    if absolute_paths:
        frame["file_name"] = [str(Path(p).resolve()) for p in frame["path"]]
    else:
        frame["file_name"] = [
            Path(os.path.relpath(Path(p).resolve(), out_dir.resolve())).as_posix()
            for p in frame["path"]
        ]
    frame["image"] = [
        label_studio_image_url(p, document_root, image_url_prefix) for p in frame["path"]
    ]
    ids = set(frame["image_id"])
    gt = gt_boxes[gt_boxes["image_id"].isin(ids)]
    pseudo = pseudo_boxes[pseudo_boxes["image_id"].isin(ids)]
    strategies = sorted(pseudo["strategy"].dropna().unique()) if "strategy" in pseudo else []
    version = "pseudo" + (f":{'+'.join(map(str, strategies))}" if strategies else "")

    paths = {
        "disagreements": out_dir / "disagreements.csv",
        "coco_ground_truth": out_dir / "coco_ground_truth.json",
        "coco_pseudo": out_dir / "coco_pseudo.json",
        "label_studio_tasks": out_dir / "label_studio_tasks.json",
        "label_studio_config": out_dir / "label_studio_config.xml",
        "readme": out_dir / "README.md",
    }
    by_image = {k: g for k, g in pseudo.groupby("image_id")} if len(pseudo) else {}
    empty = pseudo.iloc[:0]
    frame["pseudo_boxes"] = [
        format_box_list(by_image.get(image_id, empty), int(w), int(h))
        for image_id, w, h in zip(frame["image_id"], frame["width"], frame["height"], strict=True)
    ]
    for column in CORRECTION_COLUMNS:
        frame[column] = ""
    csv_columns = [c for c in items.columns if c != "path"]
    csv_columns += ["file_name", "width", "height", "pseudo_boxes", *CORRECTION_COLUMNS]
    frame[csv_columns].to_csv(paths["disagreements"], index=False)
    coco_images = frame[["image_id", "file_name", "width", "height"]]
    _write_json(
        paths["coco_ground_truth"],
        coco_dataset(
            coco_images,
            gt,
            class_names,
            source="ground_truth",
            description="NEU-DET pool ground truth of the audit's disagreements",
        ),
    )
    _write_json(
        paths["coco_pseudo"],
        coco_dataset(
            coco_images,
            pseudo,
            class_names,
            source="pseudo",
            description=f"pseudo-label boxes ({version}) of the audit's disagreements",
        ),
    )
    _write_json(
        paths["label_studio_tasks"],
        label_studio_tasks(frame, gt, pseudo, model_version=version),
    )
    paths["label_studio_config"].write_text(label_studio_config(class_names))
    paths["readme"].write_text(_readme(len(frame), document_root, absolute_paths, image_url_prefix))
    return paths


def _readme(
    n_items: int, document_root: Path | None, absolute_paths: bool, image_url_prefix: str | None
) -> str:
    coco_paths = "absolute" if absolute_paths else "relative to this folder"
    if image_url_prefix is not None:
        ls_images = f"served from `{image_url_prefix}`"
    elif document_root is not None:
        ls_images = (
            "local-files URLs: start Label Studio with "
            "`LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true` and "
            f"`LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={Path(document_root).resolve()}`"
        )
    else:
        ls_images = "absolute file:// URLs"
    return (
        "# Label review export\n\n"
        f"{n_items} pool images whose pseudo-label class disagrees with the ground truth, "
        "the most confident first.\n\n"
        "- `disagreements.csv`: one row per image.\n"
        f"- `coco_ground_truth.json`, `coco_pseudo.json`: COCO detection files sharing image ids "
        f"and categories; `file_name` is {coco_paths}; bbox is `[x, y, w, h]` in pixels.\n"
        "- `label_studio_tasks.json`: import into a Label Studio project configured with "
        f"`label_studio_config.xml`; images are {ls_images}. Each task holds two predictions, "
        "the pseudo-label and the ground truth.\n\n"
        "## Sending corrections back\n\n"
        "Any of the three files, once corrected, goes back with "
        "`cascade-defect review import FILE --run-dir <run folder>`, which writes the `reviewed` "
        "label source into `../reviewed/` (the run's pseudo-labels with the reviewed images "
        "replaced, and where each change came from). It checks the whole file first and applies "
        "nothing if any row is wrong.\n\n"
        "- `disagreements.csv`: fill `corrected_class` (a class, or `no_defect`) and/or "
        "`corrected_boxes` (`class x y w h` in pixels, top-left corner and size, boxes separated "
        "by `;`, e.g. `inclusion 12 30 40 25; inclusion 100 0 20 60`; `none` for no box). "
        "`pseudo_boxes` shows the boxes in that notation. Rows with both cells empty are not "
        "reviewed; an empty `corrected_boxes` keeps the pseudo boxes (relabelled to the corrected "
        "class). An optional `reviewed_at` column (ISO 8601) dates each row.\n"
        "- Label Studio: export the project as JSON; each task's latest submitted annotation "
        "counts (skipped ones and tasks without annotations are not reviewed). The `defect_class` "
        "choice sets the class; rectangles replace the boxes; a choice alone keeps the boxes.\n"
        "- COCO: every listed image is reviewed; its annotations replace its boxes, and its class "
        "is the image's `defect_class` field when present, else its boxes' most common class.\n"
    )


def _write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _is_nan(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
