"""Golden test-set comparison, bootstrap intervals and the YOLO → annotator cascade (chapter 06).

Every model is scored on the same golden test images with human labels. Detections are saved
once per model and matched to the ground truth image by image, following ultralytics' own
rules (greedy matching in confidence order, 101-point interpolated AP, classes averaged over
those present in the ground truth), so that:

* mAP can be recomputed for any resample of test images in milliseconds, which makes a
  bootstrap over images (and over the paired difference pseudo − human) cheap;
* the numbers can be checked against ultralytics' ``model.val`` on the same images.

The cascade runs YOLO first and sends images whose top confidence is below a threshold to the
annotator; its accuracy and cost per 1,000 images are traced over the threshold.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.costs import cost_per_1000_images
from cascade_defect.manifest import ChapterRun, require_inputs
from cascade_defect.progress import progress_disabled
from cascade_defect.settings import StudyConfig
from cascade_defect.split import SplitLayout, read_labelled_listing
from cascade_defect.training import (
    HUMAN,
    PSEUDO,
    TrainingOutputs,
    link_or_copy,
    noise_rate,
    read_training_results,
)
from cascade_defect.yolo_env import import_ultralytics, quiet_ultralytics, resolve_device

log = logging.getLogger(__name__)

#: IoU thresholds of mAP50-95 (the first one gives mAP50).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
CONFIDENCE_GRID = np.round(np.arange(0.05, 0.96, 0.01), 2)
"""Confidence thresholds swept for precision/recall and the KPI (rounded: 0.42, not 0.42000000000000004)."""
#: The recall grid of COCO's (and ultralytics') 101-point interpolated AP.
_RECALL_GRID = np.linspace(0.0, 1.0, 101)
DETECTION_COLUMNS = ["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]
NO_DETECTION = "none"


# --------------------------------------------------------------------------- AP


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


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of corner boxes ``a`` (N, 4) and ``b`` (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-7)


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
    iou = box_iou(true_boxes, pred_boxes)  # (M, N)
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


# --------------------------------------------------------------------------- bootstrap


def bootstrap_indices(n_images: int, n_samples: int, seed: int) -> np.ndarray:
    """Per-image multiplicities of ``n_samples`` resamples of the test images (with replacement).

    The same draws are reused for every model, so differences between models are paired.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(n_samples, n_images))
    return np.stack([np.bincount(row, minlength=n_images) for row in draws])


def bootstrap_map50(
    matched: MatchedDetections, multiplicities: np.ndarray, progress: bool = False, desc: str = ""
) -> np.ndarray:
    """mAP50 of each resample (one value per row of ``multiplicities``)."""
    values = np.empty(len(multiplicities))
    for i, weights in enumerate(
        tqdm(
            multiplicities,
            desc=desc or "bootstrap",
            unit="sample",
            disable=progress_disabled(progress),
        )
    ):
        ap = ap_per_class(matched, weights, iou_columns=slice(0, 1))[:, 0]
        values[i] = np.nanmean(ap) if np.isfinite(ap).any() else np.nan
    return values


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap samples."""
    alpha = (1 - level) / 2
    low, high = np.nanquantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_table(
    estimates: Mapping[str, float],
    samples: Mapping[str, np.ndarray],
    *,
    reference: str = HUMAN,
    candidate: str = PSEUDO,
    level: float = 0.95,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """CIs of mAP50 per model and of the paired difference and ratio candidate vs reference."""
    rows = []
    for source, values in samples.items():
        low, high = percentile_interval(values, level)
        rows.append({"source": source, "map50": estimates[source], "ci_low": low, "ci_high": high})
    table = pd.DataFrame(rows).set_index("source") if rows else pd.DataFrame()
    comparison: dict[str, Any] = {}
    if reference in samples and candidate in samples:
        diff = samples[candidate] - samples[reference]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = samples[candidate] / samples[reference]
        comparison = {
            "reference": reference,
            "candidate": candidate,
            "difference": estimates[candidate] - estimates[reference],
            "difference_ci": percentile_interval(diff, level),
            "ratio": estimates[candidate] / estimates[reference]
            if estimates[reference]
            else float("nan"),
            "ratio_ci": percentile_interval(ratio[np.isfinite(ratio)], level)
            if np.isfinite(ratio).any()
            else (float("nan"), float("nan")),
            "share_of_samples_candidate_worse": float(np.mean(diff < 0)),
            "level": level,
        }
    return table, comparison


# --------------------------------------------------------------------------- image level


def image_predictions(matched: MatchedDetections) -> pd.DataFrame:
    """Each test image's top-confidence detection: its class and confidence (0 if none)."""
    top_class = np.full(len(matched.image_ids), -1)
    top_conf = np.zeros(len(matched.image_ids))
    seen = np.zeros(len(matched.image_ids), dtype=bool)
    for i, c, conf in zip(matched.image_index, matched.class_id, matched.confidence, strict=True):
        if not seen[i]:  # detections are sorted by confidence, so the first one is the top one
            seen[i] = True
            top_class[i], top_conf[i] = c, conf
    names = np.array([*matched.class_names, NO_DETECTION], dtype=object)
    return pd.DataFrame(
        {
            "image_id": matched.image_ids,
            "predicted_class": names[np.where(top_class >= 0, top_class, len(matched.class_names))],
            "top_confidence": top_conf,
        }
    )


def image_accuracy(predictions: pd.DataFrame, truth: Mapping[str, str] | pd.Series) -> float:
    """Share of images whose top detection names the image's class (no detection is wrong)."""
    truth = pd.Series(truth)
    expected = predictions["image_id"].map(truth)
    return float((predictions["predicted_class"] == expected).mean())


# --------------------------------------------------------------------------- KPI


@dataclass(frozen=True)
class KpiTarget:
    """Azure Custom Vision's deployment bar: mAP, precision and recall at one threshold."""

    map50: float = 0.85
    precision: float = 0.80
    recall: float = 0.80
    iou: float = 0.5


def threshold_sweep(
    matched: MatchedDetections, thresholds: Iterable[float] = CONFIDENCE_GRID
) -> pd.DataFrame:
    """Pooled precision and recall (IoU 0.5) and mAP50 of the kept detections per threshold."""
    rows = []
    for threshold in thresholds:
        row = precision_recall_at(matched, float(threshold))
        row["map50_kept"] = detection_metrics(matched.above(float(threshold)))["map50"]
        rows.append(row)
    return pd.DataFrame(rows)


def kpi_threshold(
    matched: MatchedDetections,
    target: KpiTarget = KpiTarget(),
    thresholds: Iterable[float] = CONFIDENCE_GRID,
) -> dict[str, Any]:
    """The confidence threshold meeting the KPI, if one exists, and why not otherwise.

    mAP is threshold-free (as Custom Vision reports it); precision and recall depend on the
    threshold. Among thresholds where both reach their bar, the one with the highest F1 wins.
    """
    iou_index = int(np.argmin(np.abs(IOU_THRESHOLDS - target.iou)))
    map_at_iou = float(np.nanmean(ap_per_class(matched)[:, iou_index]))
    sweep = []
    for threshold in thresholds:
        row = precision_recall_at(matched, float(threshold), iou_index)
        sweep.append(row)
    table = pd.DataFrame(sweep)
    table["f1"] = 2 * table["precision"] * table["recall"] / (table["precision"] + table["recall"])
    meets_pr = table[(table["precision"] >= target.precision) & (table["recall"] >= target.recall)]
    best_f1 = table.loc[table["f1"].idxmax()] if table["f1"].notna().any() else None
    result: dict[str, Any] = {
        "map": map_at_iou,
        "map_met": map_at_iou >= target.map50,
        "pr_reachable": len(meets_pr) > 0,
        "threshold": None,
        "precision": None,
        "recall": None,
    }
    chosen = meets_pr.loc[meets_pr["f1"].idxmax()] if len(meets_pr) else best_f1
    if chosen is not None:
        result.update(
            threshold=float(chosen["threshold"]),
            precision=float(chosen["precision"]),
            recall=float(chosen["recall"]),
        )
    result["met"] = bool(result["map_met"] and result["pr_reachable"])
    if result["met"]:
        result["verdict"] = (
            f"KPI met at confidence ≥ {result['threshold']:.2f} "
            f"(precision {result['precision']:.3f}, recall {result['recall']:.3f}, mAP {map_at_iou:.3f})"
        )
    else:
        reasons = []
        if not result["map_met"]:
            reasons.append(f"mAP {map_at_iou:.3f} < {target.map50:.2f}")
        if not result["pr_reachable"]:
            best = (
                f"best F1 at {result['threshold']:.2f}: precision {result['precision']:.3f}, "
                f"recall {result['recall']:.3f}"
                if result["threshold"] is not None
                else "no detection is right at any threshold"
            )
            reasons.append(
                f"no threshold gives precision ≥ {target.precision:.2f} and recall ≥ "
                f"{target.recall:.2f} ({best})"
            )
        result["verdict"] = "KPI not reachable: " + "; ".join(reasons)
    return result


# --------------------------------------------------------------------------- cascade

Annotator = Callable[[Sequence[str]], Mapping[str, str]] | Mapping[str, str]


def annotate_escalated(annotator: Annotator, image_ids: Sequence[str]) -> dict[str, str]:
    """The annotator's class for each escalated image (a mapping or a callable on image ids).

    A callable is asked once, for every image any threshold of the sweep would escalate, so an
    expensive annotator labels each image at most once. Images it cannot label stay missing and
    count as wrong.
    """
    answers = annotator(list(image_ids)) if callable(annotator) else annotator
    return {str(k): str(v) for k, v in answers.items() if str(k) in set(map(str, image_ids))}


def escalation_thresholds(
    top_confidence: Sequence[float] | pd.Series, steps: int = 20
) -> list[float]:
    """Thresholds that escalate 0, 1/steps, ..., all of the images (quantiles of the confidences).

    Fixed steps such as 0.05 would crowd every point where a confident model's scores sit; the
    quantiles spread the curve evenly over the share escalated. The last threshold lies just
    above the highest confidence, so every image is escalated there.
    """
    values = np.asarray(top_confidence, dtype=float)
    if values.size == 0:
        return [0.0]
    inner = np.quantile(values, np.linspace(0, 1, steps + 1)[1:-1])
    top = float(np.nextafter(values.max(), np.inf))
    return sorted({0.0, *map(float, inner), top})


def cascade_curve(
    yolo: pd.DataFrame,
    truth: Mapping[str, str] | pd.Series,
    annotator: Annotator,
    thresholds: Iterable[float] | None = None,
) -> pd.DataFrame:
    """Accuracy of YOLO-then-annotator against the share of images escalated, per threshold.

    ``yolo`` holds ``image_id, predicted_class, top_confidence`` (see :func:`image_predictions`).
    An image whose top confidence is below the threshold takes the annotator's class instead.
    Without ``thresholds``, :func:`escalation_thresholds` spreads them over the confidences.
    """
    if thresholds is None:
        thresholds = escalation_thresholds(yolo["top_confidence"])
    thresholds = sorted(float(t) for t in thresholds)
    truth = pd.Series(truth)
    frame = yolo.copy()
    frame["image_id"] = frame["image_id"].astype(str)
    frame["truth"] = frame["image_id"].map(truth)
    widest = thresholds[-1] if thresholds else 0.0
    candidates = frame.loc[frame["top_confidence"] < widest, "image_id"].tolist()
    answers = annotate_escalated(annotator, candidates) if candidates else {}
    frame["annotator_class"] = frame["image_id"].map(answers)
    yolo_right = frame["predicted_class"] == frame["truth"]
    annotator_right = frame["annotator_class"] == frame["truth"]
    rows = []
    for threshold in thresholds:
        escalated = frame["top_confidence"] < threshold
        correct = np.where(escalated, annotator_right, yolo_right)
        rows.append(
            {
                "threshold": threshold,
                "escalated_share": float(escalated.mean()),
                "n_escalated": int(escalated.sum()),
                "accuracy": float(correct.mean()),
                "yolo_accuracy_kept": float(yolo_right[~escalated].mean())
                if (~escalated).any()
                else float("nan"),
                "annotator_accuracy_escalated": float(annotator_right[escalated].mean())
                if escalated.any()
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def cascade_costs(
    curve: pd.DataFrame,
    *,
    annotator_usd_per_image: float,
    yolo_latency_s: float,
    vm_usd_per_hour: float,
) -> pd.DataFrame:
    """Dollars per 1,000 images for each point of the cascade curve, and for both extremes."""
    frame = curve.copy()
    costs = [
        cost_per_1000_images(annotator_usd_per_image, yolo_latency_s, vm_usd_per_hour, share)
        for share in frame["escalated_share"]
    ]
    frame["usd_per_1000_cascade"] = [c["cascade"] for c in costs]
    frame["usd_per_1000_annotator_only"] = [c["mllm_only"] for c in costs]
    frame["usd_per_1000_yolo_only"] = [c["yolo_only"] for c in costs]
    return frame


@dataclass
class CascadeInputs:
    """Who labels escalated test images and the prices that turn escalation into dollars."""

    annotator: Annotator | None
    name: str | None
    usd_per_image: float
    vm_usd_per_hour: float
    price_origin: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "annotator for escalated test images": self.name or "none (cascade skipped)",
            "annotator USD per image": self.usd_per_image,
            "annotator price from": self.price_origin.get("annotator", ""),
            "VM USD per hour": self.vm_usd_per_hour,
            "VM price from": self.price_origin.get("vm", ""),
        }


def annotator_price_per_image(annotation_summary: Mapping[str, Any]) -> tuple[float, str]:
    """Dollars per annotated image: measured in chapter 03 when it paid an API, else its estimate.

    The estimate is chapter 03's standard-price cost of one request for its priced model (no
    prompt caching, no Batch discount): an escalated image arrives alone, at an unknown time.
    """
    counts = annotation_summary.get("status_counts", {}) or {}
    answered = int(counts.get("ok", 0))
    recorded = float(annotation_summary.get("recorded_cost_usd", 0.0) or 0.0)
    if recorded > 0 and answered > 0:
        return recorded / answered, f"measured in chapter 03 ({answered} answered images)"
    estimate = annotation_summary.get("estimate", {}) or {}
    if "per_request_usd" in estimate:
        model = estimate.get("model", "the priced model")
        return float(estimate["per_request_usd"]), f"chapter 03's estimate for {model}"
    raise ValueError("chapter 03's summary holds neither a recorded cost nor an estimate")


def cascade_inputs(
    config: StudyConfig,
    *,
    annotator: str | None = "offline",
    annotator_usd_per_image: float | None = None,
    vm_usd_per_hour: float | None = None,
    progress: bool = True,
) -> CascadeInputs:
    """Resolve the cascade's annotator and prices from the parameters and earlier chapters."""
    from cascade_defect.costs import reference
    from cascade_defect.pseudo import AnnotationOutputs

    origin: dict[str, str] = {}
    if annotator_usd_per_image is None:
        outputs = AnnotationOutputs(config.paths.annotation_dir)
        require_inputs(
            {"annotation_summary": outputs.summary}, {"annotation_summary": "notebook 03"}
        )
        annotator_usd_per_image, origin["annotator"] = annotator_price_per_image(
            json.loads(outputs.summary.read_text())
        )
    else:
        origin["annotator"] = "parameter"
    if vm_usd_per_hour is None:
        vm = reference("inference_vms.cpu_vm")
        vm_usd_per_hour, origin["vm"] = float(vm.value), f"cost references: {vm.name}"
    else:
        origin["vm"] = "parameter"
    labeller = escalation_annotator(config, annotator, progress=progress) if annotator else None
    return CascadeInputs(
        annotator=labeller,
        name=annotator,
        usd_per_image=float(annotator_usd_per_image),
        vm_usd_per_hour=float(vm_usd_per_hour),
        price_origin=origin,
    )


def escalation_annotator(config: StudyConfig, kind: str, progress: bool = True) -> Annotator:
    """An annotator for the test images the cascade escalates (chapter 03 labelled the pool only).

    ``offline`` is the few-shot annotator of chapter 03's offline mode: it learns from the 18
    seeds alone, so it can label test images without seeing any of their labels. It is fitted
    here and asked once, for every image the widest threshold escalates; it is handed image ids,
    paths and hashes only.
    """
    if kind != "offline":
        raise ValueError(f"unknown test-set annotator {kind!r}; supported: 'offline'")
    from cascade_defect.offline import OfflineAnnotator

    layout = SplitLayout(config.paths.split_dir)
    seeds, seed_boxes = read_labelled_listing(layout, "seed")
    test, _ = read_labelled_listing(layout, "test")
    unlabelled = test[["image_id", "path", "sha256"]].assign(
        image_id=lambda f: f["image_id"].astype(str)
    )
    annotator = OfflineAnnotator(
        config.yolo_weights,
        cache_dir=config.work_dir / ".cache" / "offline_features",
        config_dir=config.work_dir / ".ultralytics",
        device=resolve_device(config.profile.training.device),
        progress=progress,
    )
    annotator.fit(seeds, seed_boxes, layout.class_names())

    def label(image_ids: Sequence[str]) -> dict[str, str]:
        chosen = unlabelled[unlabelled["image_id"].isin(set(map(str, image_ids)))]
        if chosen.empty:
            return {}
        answers = annotator.predict(chosen)
        return dict(zip(answers["image_id"].astype(str), answers["class_name"], strict=True))

    return label


def comparison_table(comparison: Mapping[str, Any], target_ratio: float = 0.97) -> pd.DataFrame:
    """The paired pseudo-vs-human comparison as a readable table, with the target verdict."""
    if not comparison:
        return pd.DataFrame({"value": ["needs both the reference and the candidate model"]})
    low, high = comparison["ratio_ci"]
    rows = {
        "reference": comparison["reference"],
        "candidate": comparison["candidate"],
        "mAP50 difference (candidate − reference)": round(comparison["difference"], 4),
        "95% interval of the difference": tuple(round(v, 4) for v in comparison["difference_ci"]),
        "mAP50 ratio (candidate / reference)": round(comparison["ratio"], 4),
        "95% interval of the ratio": (round(low, 4), round(high, 4)),
        f"estimate reaches {target_ratio:.0%} of the reference": comparison["ratio"]
        >= target_ratio,
        f"whole interval at or above {target_ratio:.0%}": low >= target_ratio,
        f"{target_ratio:.0%} still inside the interval": low <= target_ratio <= high,
        "share of resamples where the candidate is worse": round(
            comparison["share_of_samples_candidate_worse"], 3
        ),
    }
    return pd.Series(rows, name="value").to_frame()


def ultralytics_agreement(metrics: pd.DataFrame) -> pd.DataFrame:
    """This module's mAP next to ultralytics' ``model.val`` on the same detections, with the gap.

    The bootstrap resamples this module's statistic, so it must be the one the table reports.
    """
    columns = ["map50", "map50_ultralytics", "map50_95", "map50_95_ultralytics"]
    table = metrics[columns].copy()
    table["abs_gap_map50"] = (metrics["map50"] - metrics["map50_ultralytics"]).abs()
    return table.round(4)


def headline_source(metrics: pd.DataFrame) -> str:
    """The model the chapter's single-model figures show: pseudo if trained, else human."""
    for source in (PSEUDO, HUMAN):
        if source in metrics.index:
            return source
    return str(metrics.index[0])


# --------------------------------------------------------------------------- inference


def measure_latency(
    weights: Path,
    image_paths: Sequence[str],
    *,
    imgsz: int,
    device: str,
    config_dir: Path,
    n_warmup: int = 3,
) -> dict[str, float]:
    """Wall-clock milliseconds per image, one image per call as a service would see them.

    The first ``n_warmup`` calls (model set-up, allocator warm-up) are not counted.
    """
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    model = YOLO(str(weights))
    device = resolve_device(device)
    times = []
    with quiet_ultralytics():
        for i, path in enumerate([*image_paths[:n_warmup], *image_paths]):
            start = time.perf_counter()
            model.predict(path, imgsz=imgsz, device=device, verbose=False, conf=0.25)
            if i >= n_warmup:
                times.append((time.perf_counter() - start) * 1000)
    import torch

    values = np.asarray(times)
    return {
        "torch_threads": torch.get_num_threads(),  # ultralytics uses cpu_count - 1 on a CPU
        "latency_ms_median": float(np.median(values)),
        "latency_ms_p90": float(np.quantile(values, 0.9)),
        "latency_ms_mean": float(values.mean()),
        "n_images": len(values),
    }


def read_saved_detections(labels_dir: Path, image_sizes: pd.DataFrame) -> pd.DataFrame:
    """Detections that ``model.val(save_txt=True, save_conf=True)`` wrote, in pixel corners.

    Each file holds ``class cx cy w h confidence`` normalised to its image; ``image_sizes`` gives
    ``image_id, width, height``. An image without a file had no detection.
    """
    sizes = image_sizes.assign(image_id=image_sizes["image_id"].astype(str)).set_index("image_id")
    rows = []
    for path in sorted(Path(labels_dir).glob("*.txt")):
        if path.stem not in sizes.index:
            continue
        width, height = (float(v) for v in sizes.loc[path.stem, ["width", "height"]])
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 6:
                continue
            c, cx, cy, w, h, conf = (float(v) for v in parts)
            rows.append(
                {
                    "image_id": path.stem,
                    "class_id": int(c),
                    "confidence": conf,
                    "x1": (cx - w / 2) * width,
                    "y1": (cy - h / 2) * height,
                    "x2": (cx + w / 2) * width,
                    "y2": (cy + h / 2) * height,
                }
            )
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS)


def validate_on_test(
    weights: Path,
    data_yaml: Path,
    image_sizes: pd.DataFrame,
    *,
    imgsz: int,
    device: str,
    config_dir: Path,
    project_dir: Path,
    name: str,
    batch: int = 16,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Ultralytics' own test-set scores and the detections behind them, image by image.

    ``model.val`` keeps every detection above confidence 0.001 and may give one box several
    classes (multi-label NMS), which is how mAP is conventionally computed; saving those very
    detections lets the bootstrap recompute ultralytics' mAP exactly on any resample.
    """
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    model = YOLO(str(weights))
    save_dir = Path(project_dir).resolve() / name
    if save_dir.exists():
        shutil.rmtree(save_dir)
    with quiet_ultralytics():
        metrics = model.val(
            data=str(data_yaml),
            split="val",
            imgsz=imgsz,
            batch=batch,
            device=resolve_device(device),
            conf=0.001,
            iou=0.7,
            save_txt=True,
            save_conf=True,
            plots=False,
            verbose=False,
            workers=0,
            project=str(Path(project_dir).resolve()),
            name=name,
            exist_ok=True,
        )
    box = metrics.box
    names = metrics.names
    scores = {
        "map50": float(box.map50),
        "map50_95": float(box.map),
        "precision": float(box.mp),
        "recall": float(box.mr),
        "ap50": {
            names[int(c)]: float(v) for c, v in zip(box.ap_class_index, box.ap50, strict=True)
        },
    }
    detections = read_saved_detections(Path(metrics.save_dir) / "labels", image_sizes)
    return scores, detections


# --------------------------------------------------------------------------- chapter 06


@dataclass(frozen=True)
class ComparisonOutputs:
    """The files chapter 06 writes."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "test_metrics.csv"

    @property
    def per_class(self) -> Path:
        return self.root / "per_class_ap50.csv"

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap_map50.csv"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison.json"

    @property
    def kpi(self) -> Path:
        return self.root / "kpi.csv"

    @property
    def thresholds(self) -> Path:
        return self.root / "threshold_sweep.csv"

    @property
    def cascade(self) -> Path:
        return self.root / "cascade.csv"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def test_dataset(self) -> Path:
        return self.root / "test_dataset"

    def detections(self, source: str) -> Path:
        return self.predictions_dir / f"detections_{source}.csv"


@dataclass
class ComparisonChapter:
    """What chapter 06 shows."""

    metrics: pd.DataFrame
    per_class: pd.DataFrame
    bootstrap: pd.DataFrame
    comparison: dict[str, Any]
    kpi: pd.DataFrame
    thresholds: pd.DataFrame
    cascade: pd.DataFrame
    samples: dict[str, np.ndarray]
    outputs: ComparisonOutputs
    latency: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def golden_test_truth(layout: SplitLayout) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Test images (id, path, class) and their boxes in pixel corners with class indices."""
    images, boxes = read_labelled_listing(layout, "test")
    class_names = layout.class_names()
    index = {name: i for i, name in enumerate(class_names)}
    images["image_id"] = images["image_id"].astype(str)
    boxes = boxes[boxes["class_name"].isin(index)].copy()
    truth = pd.DataFrame(
        {
            "image_id": boxes["image_id"].astype(str),
            "class_id": boxes["class_name"].map(index).astype(int),
            "x1": boxes["xmin"].astype(float),
            "y1": boxes["ymin"].astype(float),
            "x2": boxes["xmax"].astype(float),
            "y2": boxes["ymax"].astype(float),
        }
    )
    return images, truth, class_names


def golden_test_dataset(layout: SplitLayout, target: Path, class_names: Sequence[str]) -> Path:
    """A linked copy of the test split for ``model.val`` (its label cache lands here, not in 02)."""
    import yaml

    source = layout.yolo_dir("test")
    for sub in ("images", "labels"):
        for path in sorted((source / sub).glob("*")):
            if path.is_file() and not path.name.endswith(".cache"):
                link_or_copy(path, target / sub / path.name)
    data_yaml = target / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump(
            {
                "path": str(target.resolve()),
                "train": "images",
                "val": "images",
                "names": dict(enumerate(class_names)),
            },
            sort_keys=False,
        )
    )
    return data_yaml


def run_comparison(
    config: StudyConfig,
    *,
    sources: Sequence[str] | None = None,
    reference: str = HUMAN,
    candidate: str = PSEUDO,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    kpi_target: KpiTarget = KpiTarget(),
    latency_images: int = 50,
    annotator: Annotator | None = None,
    annotator_name: str = "annotator",
    annotator_usd_per_image: float = 0.0,
    vm_usd_per_hour: float = 0.0,
    cascade_source: str | None = None,
    progress: bool = True,
) -> ComparisonChapter:
    """Score every trained model on the golden test set, bootstrap, check the KPI, run the cascade.

    ``annotator`` labels the test images the cascade escalates (a mapping image id -> class, or
    a callable on image ids); without one the cascade table is left empty and a note says so.
    """
    training = TrainingOutputs(config.paths.training_dir)
    results = read_training_results(training)
    chosen = [s for s in (sources or list(results)) if s in results]
    missing = [s for s in (sources or []) if s not in results]
    if missing:
        raise ValueError(f"no trained model for {missing}: run notebook 05 with those sources")
    layout = SplitLayout(config.paths.split_dir)
    require_inputs({"test": layout.test_listing}, {"test": "notebook 02 (split)"})
    out = ComparisonOutputs(config.paths.comparison_dir)
    run = ChapterRun(
        "06_test_comparison",
        config,
        out.root,
        parameters={
            "sources": chosen,
            "reference": reference,
            "candidate": candidate,
            "n_bootstrap": n_bootstrap,
            "bootstrap_seed": bootstrap_seed,
            "kpi_target": kpi_target.__dict__,
            "latency_images": latency_images,
            "annotator": annotator_name if annotator is not None else None,
            "annotator_usd_per_image": annotator_usd_per_image,
            "vm_usd_per_hour": vm_usd_per_hour,
        },
        inputs={"training_results": training.results, "test": layout.test_listing},
    )
    out.predictions_dir.mkdir(parents=True, exist_ok=True)
    images, truth, class_names = golden_test_truth(layout)
    image_truth = images.set_index("image_id")["class_name"]
    config_dir = config.work_dir / ".ultralytics"
    settings = config.profile.training
    data_yaml = golden_test_dataset(layout, out.test_dataset, class_names)
    matched: dict[str, MatchedDetections] = {}
    rows, per_class = [], {}
    image_level: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    for source in chosen:
        weights = Path(results[source]["best_weights"])
        imgsz = int(results[source].get("imgsz", settings.imgsz))
        with run.timed(f"val_{source}"):
            reference_scores, detections = validate_on_test(
                weights,
                data_yaml,
                images[["image_id", "width", "height"]],
                imgsz=imgsz,
                device=settings.device,
                config_dir=config_dir,
                project_dir=out.root / "ultralytics_val",
                name=source,
            )
        detections.to_csv(out.detections(source), index=False)
        matched[source] = match_detections(detections, truth, list(images["image_id"]), class_names)
        own = detection_metrics(matched[source])
        image_level[source] = image_predictions(matched[source])
        per_class[source] = own["ap50"]
        rows.append(
            {
                "source": source,
                "noise_rate": noise_rate(source),
                "map50": own["map50"],
                "map50_95": own["map50_95"],
                "precision": reference_scores["precision"],
                "recall": reference_scores["recall"],
                "image_accuracy": image_accuracy(image_level[source], image_truth),
                "map50_ultralytics": reference_scores["map50"],
                "map50_95_ultralytics": reference_scores["map50_95"],
                "epochs": int(results[source].get("epochs_run", 0)),
                "train_wall_minutes": round(float(results[source]["wall_seconds"]) / 60, 2),
            }
        )
    metrics = pd.DataFrame(rows).set_index("source")
    latency_source = reference if reference in chosen else (chosen[0] if chosen else None)
    latency: dict[str, float] = {}
    if latency_source is not None and latency_images > 0:
        with run.timed("latency"):
            latency = measure_latency(
                Path(results[latency_source]["best_weights"]),
                list(images["path"])[:latency_images],
                imgsz=int(results[latency_source].get("imgsz", settings.imgsz)),
                device=settings.device,
                config_dir=config_dir,
            )
        metrics["latency_ms_median"] = latency["latency_ms_median"]
    multiplicities = bootstrap_indices(len(images), n_bootstrap, bootstrap_seed)
    samples: dict[str, np.ndarray] = {}
    with run.timed("bootstrap"):
        for source in chosen:
            samples[source] = bootstrap_map50(
                matched[source], multiplicities, progress=progress, desc=f"bootstrap {source}"
            )
    boot, comparison = bootstrap_table(
        metrics["map50"].to_dict(), samples, reference=reference, candidate=candidate
    )
    if len(boot):
        metrics = metrics.join(boot[["ci_low", "ci_high"]].add_prefix("map50_"))
    kpi_rows, sweeps = [], []
    for source in chosen:
        verdict = kpi_threshold(matched[source], kpi_target)
        kpi_rows.append({"source": source, **verdict})
        sweeps.append(threshold_sweep(matched[source]).assign(source=source))
    kpi = pd.DataFrame(kpi_rows).set_index("source") if kpi_rows else pd.DataFrame()
    thresholds = pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame()
    cascade_from = cascade_source or (candidate if candidate in chosen else latency_source)
    cascade = pd.DataFrame()
    if annotator is None:
        notes.append("No annotator predictions for the test images were given: no cascade curve.")
    elif cascade_from is not None:
        with run.timed("cascade"):
            cascade = cascade_curve(image_level[cascade_from], image_truth, annotator)
        cascade = cascade_costs(
            cascade,
            annotator_usd_per_image=annotator_usd_per_image,
            yolo_latency_s=latency.get("latency_ms_median", 0.0) / 1000,
            vm_usd_per_hour=vm_usd_per_hour,
        ).assign(yolo_source=cascade_from, annotator=annotator_name)
    per_class_table = pd.DataFrame(per_class)
    per_class_table.index.name = "class_name"
    metrics.to_csv(out.metrics)
    per_class_table.to_csv(out.per_class)
    boot.to_csv(out.bootstrap)
    kpi.to_csv(out.kpi)
    thresholds.to_csv(out.thresholds, index=False)
    cascade.to_csv(out.cascade, index=False)
    payload = {
        "comparison": comparison,
        "latency": {**latency, "source": latency_source},
        "n_test_images": len(images),
        "n_bootstrap": n_bootstrap,
        "notes": notes,
        "max_abs_map50_gap_vs_ultralytics": float(
            (metrics["map50"] - metrics["map50_ultralytics"]).abs().max()
        )
        if len(metrics)
        else None,
    }
    out.comparison.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    run.counts.update(n_models=len(chosen), n_test_images=len(images))
    run.write(
        {
            "metrics": out.metrics,
            "per_class": out.per_class,
            "bootstrap": out.bootstrap,
            "comparison": out.comparison,
            "kpi": out.kpi,
            "threshold_sweep": out.thresholds,
            "cascade": out.cascade,
            "predictions": out.predictions_dir,
        }
    )
    return ComparisonChapter(
        metrics,
        per_class_table,
        boot,
        comparison,
        kpi,
        thresholds,
        cascade,
        samples,
        out,
        latency={**latency, "source": latency_source},
        notes=notes,
    )
