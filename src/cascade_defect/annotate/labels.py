"""Chapter 03's outputs: the pseudo-labels every later chapter reads, whatever the annotator.

Two tables: ``pseudo_labels.csv`` (one row per pool image: the annotator's class, confidence,
reasoning and status) and ``pseudo_boxes.csv`` (one row per box and box strategy, normalised
``x1, y1, x2, y2``), plus YOLO-format labels for each box strategy. Images whose annotation
failed stay in ``pseudo_labels.csv`` with ``status="failed"`` and never get a label file.
"""

from __future__ import annotations

import os

import pandas as pd

from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.data.tables import read_table
from cascade_defect.data.yolo_txt import yolo_line

LABEL_COLUMNS = [
    "image_id",
    "status",
    "defect_class",
    "confidence",
    "reasoning",
    "annotator",
    "model",
    "failure_kind",
    "cost_usd",
]


BOX_COLUMNS = ["image_id", "strategy", "class_name", "x1", "y1", "x2", "y2", "confidence"]


TEXT_COLUMNS = ("status", "defect_class", "reasoning", "annotator", "model", "failure_kind")
"""Label-table columns read as text, so a class or model named like a number stays a name."""


def read_label_tables(
    labels_path: str | os.PathLike[str], boxes_path: str | os.PathLike[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labels and boxes tables (chapter 03's, or the reviewed copies), ids and names as text."""
    labels = read_table(labels_path, dtype=dict.fromkeys(TEXT_COLUMNS, "object"))
    boxes = read_table(boxes_path, dtype={"strategy": "object", "class_name": "object"})
    return labels, boxes


def image_labels_from_store(store: AnnotationStore, pool: pd.DataFrame) -> pd.DataFrame:
    """One row per pool image from the latest answer in the store (matched by image sha256).

    Keys change with the prompt or model, so images are matched by the hash of their bytes;
    the newest ``ok`` record wins, and an image with only failures is reported as failed.
    """
    best: dict[str, object] = {}
    for record in store.records():
        current = best.get(record.image_sha256)
        if record.status == "ok" or current is None or getattr(current, "status", "failed") != "ok":
            best[record.image_sha256] = record
    rows = []
    for image in pool.itertuples(index=False):
        record = best.get(image.sha256)
        if record is None:
            rows.append({"image_id": image.image_id, "status": "missing"})
            continue
        prediction = record.prediction
        rows.append(
            {
                "image_id": image.image_id,
                "status": record.status,
                "defect_class": prediction.defect_class if prediction else None,
                "confidence": prediction.confidence if prediction else None,
                "reasoning": prediction.reasoning if prediction else None,
                "annotator": record.annotator,
                "model": record.model,
                "failure_kind": record.failure_kind,
                "cost_usd": record.cost_usd,
            }
        )
    return pd.DataFrame(rows).reindex(columns=LABEL_COLUMNS)


def yolo_lines(rows: pd.DataFrame, class_index: dict[str, int]) -> list[str]:
    """``class cx cy w h`` from normalised corner boxes; unknown classes are skipped."""
    lines = []
    for row in rows.itertuples(index=False):
        if row.class_name not in class_index:
            continue
        cx, cy = (row.x1 + row.x2) / 2, (row.y1 + row.y2) / 2
        lines.append(
            yolo_line(class_index[row.class_name], cx, cy, row.x2 - row.x1, row.y2 - row.y1)
        )
    return lines
