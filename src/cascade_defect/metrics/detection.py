"""Detection scoring as ultralytics does it (IoU, greedy matching, 101-point AP), on saved output.

Detections are matched to the ground truth once; any resample of test images then gets its mAP
without matching again, which is what makes the bootstrap over images cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: IoU thresholds of mAP50-95 (the first one gives mAP50).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


#: The recall grid of COCO's (and ultralytics') 101-point interpolated AP.
_RECALL_GRID = np.linspace(0.0, 1.0, 101)


DETECTION_COLUMNS = ["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]


NO_DETECTION = "none"


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, sampled at 101 recall points (COCO, ultralytics).

    Precision drops to zero after the last recall reached, so a detector that finds every box
    without a false positive scores 0.995 rather than 1 (the last grid step is lost); that is
    ultralytics' convention and this function keeps it so the two agree.
    """
    recall = np.asarray(recall, dtype=float)
    precision = np.asarray(precision, dtype=float)
    last = recall[-1] if len(recall) else 1.0
    mrec = np.concatenate(([0.0], recall, [last], [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    values = np.interp(_RECALL_GRID, mrec, mpre)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(_RECALL_GRID)))


#: What ultralytics adds to every union when it matches detections; kept so that an IoU exactly
#: at a threshold is decided as ultralytics decides it.
ULTRALYTICS_UNION_EPS = 1e-7


def box_iou(a: np.ndarray, b: np.ndarray, union_eps: float = 0.0) -> np.ndarray:
    """Pairwise IoU of corner boxes ``a`` (N, 4) and ``b`` (M, 4) -> (N, M), float64.

    torchvision's intersection and union; an inverted box counts as empty, and a pair with
    zero union (two empty boxes) has IoU 0. ``union_eps`` is added to each union before the
    division (:data:`ULTRALYTICS_UNION_EPS` in detection matching, 0 for the plain ratio).
    """
    import torch
    from torchvision.ops.boxes import _box_inter_union  # what torchvision.ops.box_iou divides

    a = _corner_boxes(a)
    b = _corner_boxes(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter, union = _box_inter_union(torch.from_numpy(a), torch.from_numpy(b))
    if union_eps:
        return (inter / (union + union_eps)).numpy()
    return torch.where(union > 0, inter / union, 0.0).numpy()


def _corner_boxes(boxes: np.ndarray) -> np.ndarray:
    """``x1, y1, x2, y2`` rows as float64, with an inverted side collapsed to zero width."""
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    return boxes


def match_image(
    pred_boxes: np.ndarray,
    pred_classes: np.ndarray,
    true_boxes: np.ndarray,
    true_classes: np.ndarray,
    thresholds: np.ndarray = IOU_THRESHOLDS,
) -> np.ndarray:
    """Which predictions (given in descending confidence) are true positives at each IoU.

    Ultralytics' greedy rule: each prediction in turn claims the unclaimed ground-truth box of
    its class with the highest IoU, separately at every threshold. Returns a (N, T) bool array.
    """
    n_pred = len(pred_classes)
    correct = np.zeros((n_pred, len(thresholds)), dtype=bool)
    if n_pred == 0 or len(true_classes) == 0:
        return correct
    iou = box_iou(true_boxes, pred_boxes, ULTRALYTICS_UNION_EPS)  # (M, N)
    iou = iou * (np.asarray(true_classes)[:, None] == np.asarray(pred_classes)[None, :])
    claimed = np.zeros((len(true_classes), len(thresholds)), dtype=bool)
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(claimed, 0.0, iou[:, j, None])
        best = available.argmax(0)
        correct[j] = available[best, range(len(thresholds))] >= thresholds
        claimed[best, range(len(thresholds))] |= correct[j]
    return correct


@dataclass(frozen=True)
class MatchedDetections:
    """A model's test-set detections, matched once, sorted by descending confidence.

    ``gt_counts[i, c]`` is the number of ground-truth boxes of class ``c`` in image ``i``; with
    it, any resample of images (a vector of per-image multiplicities) gives the matching result
    of the resampled test set without matching again.
    """

    image_ids: list[str]
    class_names: list[str]
    image_index: np.ndarray  # (D,) int: image of each detection
    class_id: np.ndarray  # (D,) int
    confidence: np.ndarray  # (D,) float, descending
    correct: np.ndarray  # (D, T) bool
    gt_counts: np.ndarray  # (I, C) int

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def above(self, threshold: float) -> MatchedDetections:
        """Only the detections at or above a confidence threshold."""
        keep = self.confidence >= threshold
        return MatchedDetections(
            self.image_ids,
            self.class_names,
            self.image_index[keep],
            self.class_id[keep],
            self.confidence[keep],
            self.correct[keep],
            self.gt_counts,
        )


def match_detections(
    detections: pd.DataFrame,
    ground_truth: pd.DataFrame,
    image_ids: Sequence[str],
    class_names: Sequence[str],
) -> MatchedDetections:
    """Match saved detections to ground-truth boxes (both in pixel corners) per image."""
    image_ids = [str(i) for i in image_ids]
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    n_classes = len(class_names)
    dets = detections.copy()
    dets["image_id"] = dets["image_id"].astype(str)
    truth = ground_truth.copy()
    truth["image_id"] = truth["image_id"].astype(str)
    unknown = set(dets["image_id"]) - set(position)
    if unknown:
        raise ValueError(f"{len(unknown)} detections belong to images outside the test set")
    gt_counts = np.zeros((len(image_ids), n_classes), dtype=int)
    truth = truth[truth["image_id"].isin(position)]
    for (image_id, class_id), n in truth.groupby(["image_id", "class_id"]).size().items():
        gt_counts[position[image_id], int(class_id)] += int(n)
    truth_by_image = {k: g for k, g in truth.groupby("image_id")}
    parts = []
    for image_id, group in dets.groupby("image_id", sort=False):
        group = group.sort_values("confidence", ascending=False, kind="stable")
        gt = truth_by_image.get(image_id)
        correct = match_image(
            group[["x1", "y1", "x2", "y2"]].to_numpy(float),
            group["class_id"].to_numpy(int),
            np.empty((0, 4)) if gt is None else gt[["x1", "y1", "x2", "y2"]].to_numpy(float),
            np.empty(0, int) if gt is None else gt["class_id"].to_numpy(int),
        )
        parts.append(
            (
                np.full(len(group), position[image_id]),
                group["class_id"].to_numpy(int),
                group["confidence"].to_numpy(float),
                correct,
            )
        )
    if parts:
        image_index = np.concatenate([p[0] for p in parts])
        class_id = np.concatenate([p[1] for p in parts])
        confidence = np.concatenate([p[2] for p in parts])
        correct = np.concatenate([p[3] for p in parts])
    else:
        image_index = class_id = np.empty(0, int)
        confidence = np.empty(0, float)
        correct = np.empty((0, len(IOU_THRESHOLDS)), bool)
    order = np.argsort(-confidence, kind="stable")
    return MatchedDetections(
        image_ids=image_ids,
        class_names=list(class_names),
        image_index=image_index[order],
        class_id=class_id[order],
        confidence=confidence[order],
        correct=correct[order],
        gt_counts=gt_counts,
    )


def ap_per_class(
    matched: MatchedDetections,
    multiplicity: np.ndarray | None = None,
    iou_columns: slice = slice(None),
) -> np.ndarray:
    """AP per class and IoU threshold (C, T); NaN for classes without ground truth.

    ``multiplicity`` (one count per image) evaluates a resampled test set: each detection and
    each ground-truth box counts as many times as its image was drawn.
    """
    n_iou = matched.correct[:, iou_columns].shape[1]
    result = np.full((matched.n_classes, n_iou), np.nan)
    if multiplicity is None:
        gt_per_class = matched.gt_counts.sum(0)
        repeat = None
    else:
        multiplicity = np.asarray(multiplicity, dtype=int)
        gt_per_class = (matched.gt_counts * multiplicity[:, None]).sum(0)
        repeat = multiplicity[matched.image_index]
    for c in range(matched.n_classes):
        n_labels = gt_per_class[c]
        if n_labels == 0:
            continue
        mask = matched.class_id == c
        correct = matched.correct[mask][:, iou_columns]
        if repeat is not None:
            correct = np.repeat(correct, repeat[mask], axis=0)
        if len(correct) == 0:
            result[c] = 0.0
            continue
        tpc = np.cumsum(correct, axis=0)
        fpc = np.cumsum(~correct, axis=0)
        recall = tpc / (n_labels + 1e-16)
        precision = tpc / (tpc + fpc)
        for t in range(n_iou):
            result[c, t] = average_precision(recall[:, t], precision[:, t])
    return result


def detection_metrics(matched: MatchedDetections) -> dict[str, Any]:
    """mAP50, mAP50-95 and AP50 per class, averaged over classes present in the ground truth."""
    ap = ap_per_class(matched)
    return {
        "map50": float(np.nanmean(ap[:, 0])) if np.isfinite(ap[:, 0]).any() else float("nan"),
        "map50_95": float(np.nanmean(ap.mean(1))) if np.isfinite(ap).any() else float("nan"),
        "ap50": dict(zip(matched.class_names, ap[:, 0].tolist(), strict=True)),
    }


def precision_recall_at(
    matched: MatchedDetections, threshold: float, iou_index: int = 0
) -> dict[str, float]:
    """Pooled precision and recall of the detections kept at a confidence threshold.

    Pooled over classes (every box counts once), as a deployed detector is judged; IoU 0.5 by
    default (``iou_index`` picks another of :data:`IOU_THRESHOLDS`).
    """
    keep = matched.confidence >= threshold
    tp = int(matched.correct[keep, iou_index].sum())
    n_pred = int(keep.sum())
    n_gt = int(matched.gt_counts.sum())
    return {
        "threshold": float(threshold),
        "precision": tp / n_pred if n_pred else float("nan"),
        "recall": tp / n_gt if n_gt else float("nan"),
        "n_detections": n_pred,
    }


def ground_truth_table(boxes: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Labelled boxes (``image_id, class_name, xmin, ymin, xmax, ymax``) as matching input.

    Pixel corners and class indices, as :func:`match_detections` reads them; boxes of a class
    outside ``class_names`` are left out.
    """
    index = {name: i for i, name in enumerate(class_names)}
    boxes = boxes[boxes["class_name"].isin(index)]
    return pd.DataFrame(
        {
            "image_id": boxes["image_id"].astype(str),
            "class_id": boxes["class_name"].map(index).astype(int),
            "x1": boxes["xmin"].astype(float),
            "y1": boxes["ymin"].astype(float),
            "x2": boxes["xmax"].astype(float),
            "y2": boxes["ymax"].astype(float),
        }
    )


def ultralytics_agreement(metrics: pd.DataFrame) -> pd.DataFrame:
    """This package's mAP next to ultralytics' ``model.val`` on the same detections, with the gap.

    The bootstrap resamples this package's statistic, so it must be the one the table reports.
    """
    columns = ["map50", "map50_ultralytics", "map50_95", "map50_95_ultralytics"]
    table = metrics[columns].copy()
    table["abs_gap_map50"] = (metrics["map50"] - metrics["map50_ultralytics"]).abs()
    return table.round(4)
