"""The label audit: chapter 03's pseudo-labels measured against the pool's hidden ground truth.

Nobody should train on labels nobody has checked. This module answers, before training, how often
the annotator names the right class (accuracy, per-class precision / recall / F1, confusion), how
far its confidence can be trusted (reliability diagram, expected calibration error), what a
confidence threshold buys (coverage against accuracy), how well each box strategy finds the
ground-truth boxes (best IoU, recall and precision at IoU 0.5), and what failed. It writes a
machine-readable summary (``audit_summary.json``) that the training, comparison and cost chapters
read, including the confidence threshold training applies.

Conventions, stated once here and repeated in the book:

- **Truth is the file's class.** Every NEU-DET image is named after one defect class. Some images
  also hold boxes of another class; a prediction naming any class present in the image's boxes
  is counted as *acceptable* in a secondary metric, never in the headline accuracy.
- **``no_defect`` is wrong.** Every NEU-DET image shows a defect, so a ``no_defect`` answer is a
  wrong answer (it is kept in the confusion matrix as its own column).
- **Failures are not covered.** A failed or missing request yields no label: it counts as wrong in
  ``accuracy`` (share of the pool labelled correctly), is excluded from ``accuracy_answered``, and
  is never kept by a confidence threshold.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import precision_recall_fscore_support

from cascade_defect.annotate.schema import NO_DEFECT, AnnotationRecord
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.manifest import ChapterRun, MissingInputError, require_inputs
from cascade_defect.pseudo import AnnotationOutputs, read_pseudo_labels
from cascade_defect.settings import StudyConfig
from cascade_defect.split import SplitLayout, read_pool_ground_truth, read_pool_listing

logger = logging.getLogger(__name__)

SUMMARY_SCHEMA_VERSION = 1
NOT_ANSWERED = "not_answered"
"""Confusion-matrix column for images without an answer (failed or missing request)."""
DEFAULT_N_BINS = 10
DEFAULT_IOU_THRESHOLD = 0.5
REPORT_THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
"""Thresholds always tabulated in the summary, so later chapters can compare without re-running."""
_EXCERPT_CHARS = 300
_BOX_COLUMNS = ["x1", "y1", "x2", "y2"]


# -- the per-image table ---------------------------------------------------------------------


def image_table(truth: pd.DataFrame, gt_boxes: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per pool image: true class, answer, confidence and whether it is right.

    The pool's truth defines the images: a labels row for an image outside it is dropped with a
    warning (it belongs to another run), and a pool image without a labels row is ``missing``.
    Columns: ``image_id, true_class, box_classes, cross_class, status, predicted, confidence,
    answered, correct, acceptable, no_defect, reasoning, failure_kind, annotator, model``.
    """
    if labels["image_id"].duplicated().any():
        dupes = labels.loc[labels["image_id"].duplicated(), "image_id"].head(5).tolist()
        raise ValueError(f"pseudo-labels hold several rows for some images, e.g. {dupes}")
    pool_ids = set(truth["image_id"])
    foreign = labels.loc[~labels["image_id"].isin(pool_ids), "image_id"]
    if len(foreign):
        logger.warning(
            "ignoring %d pseudo-labels for images outside the pool (e.g. %s)",
            len(foreign),
            foreign.iloc[0],
        )
    classes_in_boxes = (
        gt_boxes.groupby("image_id")["class_name"].agg(lambda s: tuple(sorted(set(s))))
        if len(gt_boxes)
        else pd.Series(dtype=object)
    )
    frame = truth[["image_id", "class_name"]].rename(columns={"class_name": "true_class"})
    frame = frame.merge(labels, on="image_id", how="left", validate="one_to_one")
    frame["status"] = frame["status"].fillna("missing")
    answered = frame["status"].eq("ok")
    predicted = frame["defect_class"].where(answered)
    confidence = pd.to_numeric(frame["confidence"], errors="coerce").where(answered)
    box_sets = [
        set(classes_in_boxes.get(image_id, ())) | {true_class}
        for image_id, true_class in zip(frame["image_id"], frame["true_class"], strict=True)
    ]
    out = pd.DataFrame(
        {
            "image_id": frame["image_id"],
            "true_class": frame["true_class"],
            "box_classes": [";".join(sorted(s)) for s in box_sets],
            "cross_class": [len(s) > 1 for s in box_sets],
            "status": frame["status"],
            "predicted": predicted,
            "confidence": confidence.astype(float),
            "answered": answered,
        }
    )
    out["correct"] = answered & out["predicted"].eq(out["true_class"])
    out["acceptable"] = answered & pd.Series(
        [p in s for p, s in zip(out["predicted"], box_sets, strict=True)], index=out.index
    )
    out["no_defect"] = answered & out["predicted"].eq(NO_DEFECT)
    for column in ("reasoning", "failure_kind", "annotator", "model"):
        out[column] = frame.get(column)
    missing_failure = out["status"].eq("missing")
    out.loc[missing_failure, "failure_kind"] = "missing"
    return out.reset_index(drop=True)


# -- class quality ----------------------------------------------------------------------------


def accuracy_metrics(images: pd.DataFrame) -> dict[str, float | int | None]:
    """Headline counts and accuracies of an :func:`image_table`.

    ``accuracy`` divides by every pool image (a failure is a missing label, so it counts as
    wrong); ``accuracy_answered`` divides by answered images only; ``accuracy_any_box_class``
    also accepts a class present in the image's boxes (the cross-class images).
    """
    n_images = len(images)
    n_answered = int(images["answered"].sum())
    n_correct = int(images["correct"].sum())
    return {
        "n_images": n_images,
        "n_answered": n_answered,
        "n_failed": int(images["status"].eq("failed").sum()),
        "n_missing": int(images["status"].eq("missing").sum()),
        "n_no_defect": int(images["no_defect"].sum()),
        "n_correct": n_correct,
        "n_cross_class_images": int(images["cross_class"].sum()),
        "accuracy": _ratio(n_correct, n_images),
        "accuracy_answered": _ratio(n_correct, n_answered),
        "accuracy_any_box_class": _ratio(int(images["acceptable"].sum()), n_images),
        "mean_confidence": _finite_or_none(images.loc[images["answered"], "confidence"].mean()),
    }


def per_class_metrics(images: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per true class.

    Unanswered images and ``no_defect`` answers are predictions outside ``class_names``: they
    lower the true class's recall and no class's precision, which is what a missing label does.
    """
    y_true = images["true_class"].astype(str).to_numpy()
    y_pred = images["predicted"].fillna(NOT_ANSWERED).astype(str).to_numpy()
    labels = list(class_names)
    if len(images) == 0:
        zeros = np.zeros(len(labels))
        precision, recall, f1, support = zeros, zeros, zeros, zeros.astype(int)
    else:
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
    table = pd.DataFrame(
        {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": np.asarray(support, dtype=int),
            "n_predicted": [int((y_pred == name).sum()) for name in labels],
        },
        index=pd.Index(labels, name="class_name"),
    )
    return table


def macro_scores(per_class: pd.DataFrame) -> dict[str, float | None]:
    """Unweighted means over the classes (sklearn's ``macro``): every class counts the same."""
    if per_class.empty:
        return {"macro_precision": None, "macro_recall": None, "macro_f1": None}
    return {
        f"macro_{name}": _finite_or_none(per_class[name].mean())
        for name in ("precision", "recall", "f1")
    }


def confusion_table(images: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Counts of true class (rows) against answer (columns), ``no_defect`` and unanswered included.

    A predicted class outside ``class_names`` (an annotator bug) gets its own column rather than
    vanishing, so the rows always add up to the class's image count.
    """
    predicted = images["predicted"].fillna(NOT_ANSWERED).astype(str)
    known = [*class_names, NO_DEFECT, NOT_ANSWERED]
    unexpected = sorted(set(predicted) - set(known))
    columns = [*class_names, NO_DEFECT, *unexpected, NOT_ANSWERED]
    table = pd.crosstab(images["true_class"].astype(str), predicted)
    table = table.reindex(index=list(class_names), columns=columns, fill_value=0).astype(int)
    table.index.name = "true_class"
    table.columns.name = "predicted"
    return table


# -- calibration ------------------------------------------------------------------------------


def _calibration_inputs(
    confidence: Iterable[float], correct: Iterable[bool]
) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(list(confidence), dtype=float)
    hit = np.asarray(list(correct), dtype=float)
    if conf.shape != hit.shape:
        raise ValueError("confidence and correct must have the same length")
    keep = np.isfinite(conf)
    if (~keep).any():
        logger.warning("calibration ignores %d answers without a confidence", int((~keep).sum()))
    conf, hit = conf[keep], hit[keep]
    if ((conf < 0) | (conf > 1)).any():
        raise ValueError("confidences must lie in [0, 1]")
    return conf, hit


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: bin ``b`` holds ``b/n <= c < (b+1)/n``; 1.0 is in the last.

    A tiny tolerance keeps a confidence written as a round decimal (0.7, stored as
    0.69999...) in the bin its decimal value names.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    raw = np.floor(np.asarray(confidence, dtype=float) * n_bins + 1e-9)
    return np.clip(raw, 0, n_bins - 1).astype(int)


def reliability_table(
    confidence: Iterable[float], correct: Iterable[bool], n_bins: int = DEFAULT_N_BINS
) -> pd.DataFrame:
    """Per equal-width confidence bin: count, mean confidence, accuracy and their gap.

    Empty bins stay in the table with ``n = 0`` (and NaN means) so the diagram has fixed bins.
    """
    conf, hit = _calibration_inputs(confidence, correct)
    bins = bin_index(conf, n_bins)
    rows = []
    for b in range(n_bins):
        members = bins == b
        n = int(members.sum())
        mean_conf = float(conf[members].mean()) if n else math.nan
        accuracy = float(hit[members].mean()) if n else math.nan
        rows.append(
            {
                "bin_lower": b / n_bins,
                "bin_upper": (b + 1) / n_bins,
                "n": n,
                "mean_confidence": mean_conf,
                "accuracy": accuracy,
                "gap": accuracy - mean_conf if n else math.nan,
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(
    confidence: Iterable[float], correct: Iterable[bool], n_bins: int = DEFAULT_N_BINS
) -> float:
    """ECE with equal-width bins: ``sum_b (n_b / N) * |accuracy_b - mean confidence_b|``.

    0 means the stated confidence matches the hit rate in every bin; it is NaN when there is
    no answer to judge.
    """
    table = reliability_table(confidence, correct, n_bins)
    total = int(table["n"].sum())
    if total == 0:
        return math.nan
    filled = table[table["n"] > 0]
    return float((filled["n"] / total * filled["gap"].abs()).sum())


# -- coverage against accuracy ----------------------------------------------------------------


def coverage_curve(images: pd.DataFrame) -> pd.DataFrame:
    """Coverage and accuracy when only answers with ``confidence >= threshold`` are kept.

    One row per distinct confidence, highest first: tied confidences enter together, because a
    threshold cannot separate them. Coverage divides by every pool image, so failures and
    missing answers are never covered; ``no_defect`` answers are kept and counted wrong.
    """
    n_images = len(images)
    answered = images[images["answered"] & images["confidence"].notna()]
    if answered.empty:
        return pd.DataFrame(columns=["threshold", "n_kept", "n_correct", "coverage", "accuracy"])
    grouped = (
        answered.groupby("confidence")
        .agg(n=("correct", "size"), n_correct=("correct", "sum"))
        .sort_index(ascending=False)
    )
    kept = grouped["n"].cumsum().astype(int)
    correct = grouped["n_correct"].cumsum().astype(int)
    return pd.DataFrame(
        {
            "threshold": grouped.index.to_numpy(dtype=float),
            "n_kept": kept.to_numpy(),
            "n_correct": correct.to_numpy(),
            "coverage": (kept / n_images).to_numpy(),
            "accuracy": (correct / kept).to_numpy(),
        }
    )


def coverage_at(images: pd.DataFrame, threshold: float) -> dict[str, float | int | None]:
    """What keeping answers with ``confidence >= threshold`` gives: the training set's labels.

    ``n_no_defect_kept`` is reported apart because training writes no label file for a
    ``no_defect`` answer, so those images drop out of training even when kept here.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"confidence threshold must lie in [0, 1], got {threshold}")
    kept = images["answered"] & (images["confidence"] >= threshold)
    n_kept = int(kept.sum())
    n_correct = int((kept & images["correct"]).sum())
    return {
        "threshold": float(threshold),
        "n_kept": n_kept,
        "n_correct": n_correct,
        "n_no_defect_kept": int((kept & images["no_defect"]).sum()),
        "coverage": _ratio(n_kept, len(images)),
        "accuracy": _ratio(n_correct, n_kept),
    }


# -- box quality ------------------------------------------------------------------------------


def normalise_gt_boxes(gt_boxes: pd.DataFrame, sizes: pd.DataFrame) -> pd.DataFrame:
    """Ground-truth pixel boxes as normalised ``x1, y1, x2, y2`` (the pseudo-boxes' frame).

    Coordinates are divided by the image's width and height from the pool listing, the same
    convention the YOLO exports use; an image without a known size is an error, not a guess.
    """
    if gt_boxes.empty:
        return pd.DataFrame(columns=["image_id", "class_name", *_BOX_COLUMNS])
    merged = gt_boxes.merge(
        sizes[["image_id", "width", "height"]], on="image_id", how="left", validate="many_to_one"
    )
    unknown = merged["width"].isna() | merged["height"].isna()
    if unknown.any():
        example = merged.loc[unknown, "image_id"].iloc[0]
        raise ValueError(
            f"{int(unknown.sum())} boxes belong to images of unknown size, e.g. {example}"
        )
    return pd.DataFrame(
        {
            "image_id": merged["image_id"],
            "class_name": merged["class_name"],
            "x1": merged["xmin"] / merged["width"],
            "y1": merged["ymin"] / merged["height"],
            "x2": merged["xmax"] / merged["width"],
            "y2": merged["ymax"] / merged["height"],
        }
    )


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (n x 4) with every box in ``b`` (m x 4).

    Boxes are ``x1, y1, x2, y2`` on a continuous plane; a degenerate pair (zero union) has IoU 0.
    """
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_boxes(allowed: np.ndarray, iou: np.ndarray | None = None) -> list[tuple[int, int]]:
    """One-to-one matching of ground truth (rows) to predictions (columns) with most matches.

    ``allowed`` marks the pairs that may match (IoU at or above the threshold, same class when
    class-aware). The number of matches is maximised (Hungarian algorithm), so it does not
    depend on the order of boxes or on ties; among maximal matchings the one with the highest
    total IoU is chosen when ``iou`` is given. Returns ``(gt_index, prediction_index)`` pairs.
    """
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.size == 0 or not allowed.any():
        return []
    bonus = np.zeros(allowed.shape) if iou is None else np.clip(np.asarray(iou, float), 0, 1)
    weight_per_match = min(allowed.shape) + 1.0  # one more match outweighs any IoU total
    weights = np.where(allowed, weight_per_match + bonus, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c])


@dataclass
class BoxMatches:
    """Per-box outcomes of one strategy: one row per ground-truth box, one per predicted box."""

    gt: pd.DataFrame
    predictions: pd.DataFrame


def match_strategy(
    gt_norm: pd.DataFrame,
    pseudo: pd.DataFrame,
    image_ids: Iterable[str],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> BoxMatches:
    """Best IoU and matches at ``iou_threshold`` for every box of the given images.

    An image without predictions leaves its ground-truth boxes with best IoU 0 and unmatched;
    an image without ground truth makes all its predictions false positives.
    """
    gt_by_image = {k: g for k, g in gt_norm.groupby("image_id")} if len(gt_norm) else {}
    pr_by_image = {k: g for k, g in pseudo.groupby("image_id")} if len(pseudo) else {}
    empty = pd.DataFrame(columns=["image_id", "class_name", *_BOX_COLUMNS])
    gt_rows: list[dict] = []
    pred_rows: list[dict] = []
    for image_id in image_ids:
        gt = gt_by_image.get(image_id, empty)
        pr = pr_by_image.get(image_id, empty)
        iou = iou_matrix(gt[_BOX_COLUMNS].to_numpy(float), pr[_BOX_COLUMNS].to_numpy(float))
        same_class = (
            gt["class_name"].to_numpy()[:, None] == pr["class_name"].to_numpy()[None, :]
            if len(gt) and len(pr)
            else np.zeros(iou.shape, dtype=bool)
        )
        hit = iou >= iou_threshold
        agnostic = match_boxes(hit, iou)
        aware = match_boxes(hit & same_class, iou)
        gt_agnostic = {g for g, _ in agnostic}
        gt_aware = {g for g, _ in aware}
        pr_agnostic = {p for _, p in agnostic}
        pr_aware = {p for _, p in aware}
        best = iou.max(axis=1) if iou.shape[1] else np.zeros(len(gt))
        best_same = (
            np.where(same_class, iou, 0.0).max(axis=1) if iou.shape[1] else np.zeros(len(gt))
        )
        for i, name in enumerate(gt["class_name"]):
            gt_rows.append(
                {
                    "image_id": image_id,
                    "class_name": name,
                    "best_iou": float(best[i]),
                    "best_iou_same_class": float(best_same[i]),
                    "matched_agnostic": i in gt_agnostic,
                    "matched_aware": i in gt_aware,
                }
            )
        for j, name in enumerate(pr["class_name"]):
            pred_rows.append(
                {
                    "image_id": image_id,
                    "class_name": name,
                    "matched_agnostic": j in pr_agnostic,
                    "matched_aware": j in pr_aware,
                }
            )
    gt_columns = [
        "image_id",
        "class_name",
        "best_iou",
        "best_iou_same_class",
        "matched_agnostic",
        "matched_aware",
    ]
    pred_columns = ["image_id", "class_name", "matched_agnostic", "matched_aware"]
    return BoxMatches(
        gt=pd.DataFrame(gt_rows, columns=gt_columns),
        predictions=pd.DataFrame(pred_rows, columns=pred_columns),
    )


def summarise_matches(matches: BoxMatches, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class and overall (``all``): mean best IoU, recall and precision at the IoU threshold.

    Class-aware counts need the predicted box's class to equal the ground truth's; class-agnostic
    counts only need the overlap. Per class, recall is over that class's ground-truth boxes and
    precision over the boxes predicted as that class. An undefined ratio (no boxes) is NaN.
    """
    rows = []
    for name in [*class_names, "all"]:
        gt = matches.gt if name == "all" else matches.gt[matches.gt["class_name"] == name]
        pr = (
            matches.predictions
            if name == "all"
            else matches.predictions[matches.predictions["class_name"] == name]
        )
        rows.append(
            {
                "class_name": name,
                "n_gt": len(gt),
                "n_pred": len(pr),
                "mean_best_iou": _mean_or_nan(gt["best_iou"]),
                "mean_best_iou_same_class": _mean_or_nan(gt["best_iou_same_class"]),
                "recall_aware": _mean_or_nan(gt["matched_aware"]),
                "precision_aware": _mean_or_nan(pr["matched_aware"]),
                "recall_agnostic": _mean_or_nan(gt["matched_agnostic"]),
                "precision_agnostic": _mean_or_nan(pr["matched_agnostic"]),
            }
        )
    return pd.DataFrame(rows)


def box_quality(
    gt_norm: pd.DataFrame,
    pseudo_boxes: pd.DataFrame,
    image_ids: Iterable[str],
    class_names: Sequence[str],
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> pd.DataFrame:
    """:func:`summarise_matches` for every box strategy present, stacked with a ``strategy`` column.

    ``image_ids`` is the scope (the audit uses the answered images): boxes of other images are
    ignored on both sides, so a strategy is judged on the images it was asked to box.
    """
    scope = list(dict.fromkeys(image_ids))
    in_scope = set(scope)
    gt = gt_norm[gt_norm["image_id"].isin(in_scope)]
    frames = []
    for strategy in sorted(pseudo_boxes["strategy"].dropna().unique()):
        chosen = pseudo_boxes[
            (pseudo_boxes["strategy"] == strategy) & pseudo_boxes["image_id"].isin(in_scope)
        ]
        table = summarise_matches(match_strategy(gt, chosen, scope, iou_threshold), class_names)
        table.insert(0, "strategy", str(strategy))
        table["n_images"] = len(scope)
        frames.append(table)
    if not frames:
        return pd.DataFrame(
            columns=["strategy", "class_name", "n_gt", "n_pred", "mean_best_iou", "n_images"]
        )
    return pd.concat(frames, ignore_index=True)


# -- failures and disagreements ---------------------------------------------------------------


def failed_attempts(
    records: Iterable[AnnotationRecord], pool_sha256: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Every failed request in the store, with an excerpt of what the model sent back.

    The store is append-only, so retries that later succeeded are listed too (as attempts).
    ``pool_sha256`` (sha256 -> pool image id) keeps only this pool's images, matched by content
    as chapter 03 does, and names them by their pool id.
    """
    rows = []
    for record in records:
        if record.status != "failed":
            continue
        image_id = record.image_id
        if pool_sha256 is not None:
            if record.image_sha256 not in pool_sha256:
                continue
            image_id = pool_sha256[record.image_sha256]
        rows.append(
            {
                "image_id": image_id,
                "failure_kind": record.failure_kind,
                "annotator": record.annotator,
                "model": record.model,
                "attempt": record.attempt,
                "error": _excerpt(record.error),
                "raw_text": _excerpt(record.raw_text),
                "cost_usd": record.cost_usd,
                "created_at": record.created_at,
            }
        )
    columns = [
        "image_id",
        "failure_kind",
        "annotator",
        "model",
        "attempt",
        "error",
        "raw_text",
        "cost_usd",
        "created_at",
    ]
    return pd.DataFrame(rows, columns=columns)


def failure_counts(images: pd.DataFrame, attempts: pd.DataFrame) -> pd.DataFrame:
    """Per failure kind: failed attempts (store) and images left without a label (final status)."""
    per_attempt = attempts["failure_kind"].fillna("unknown").value_counts()
    unanswered = images[~images["answered"]]
    per_image = unanswered["failure_kind"].fillna("unknown").value_counts()
    kinds = sorted(set(per_attempt.index) | set(per_image.index))
    table = pd.DataFrame(
        {
            "failed_attempts": [int(per_attempt.get(k, 0)) for k in kinds],
            "images_without_label": [int(per_image.get(k, 0)) for k in kinds],
        },
        index=pd.Index(kinds, name="failure_kind"),
    )
    return table


def disagreements(images: pd.DataFrame) -> pd.DataFrame:
    """Answered images whose class is wrong, the most confident first (ties by image id).

    A confident wrong answer is the costliest: a confidence threshold will not filter it out
    of the training set.
    """
    wrong = images[images["answered"] & ~images["correct"]].copy()
    wrong = wrong.sort_values(["confidence", "image_id"], ascending=[False, True], kind="stable")
    columns = [
        "image_id",
        "true_class",
        "predicted",
        "confidence",
        "box_classes",
        "acceptable",
        "reasoning",
        "annotator",
        "model",
    ]
    return wrong[columns].reset_index(drop=True)


# -- the chapter ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditOutputs:
    """Files chapter 04 writes: small summaries at the top, per-image tables under ``details/``."""

    root: Path

    @property
    def summary(self) -> Path:
        return self.root / "audit_summary.json"

    @property
    def per_class(self) -> Path:
        return self.root / "per_class_metrics.csv"

    @property
    def confusion(self) -> Path:
        return self.root / "confusion_matrix.csv"

    @property
    def reliability(self) -> Path:
        return self.root / "reliability_bins.csv"

    @property
    def coverage(self) -> Path:
        return self.root / "coverage_curve.csv"

    @property
    def box_metrics(self) -> Path:
        return self.root / "box_metrics.csv"

    @property
    def failure_counts(self) -> Path:
        return self.root / "failure_counts.csv"

    @property
    def details_dir(self) -> Path:
        return self.root / "details"

    @property
    def images(self) -> Path:
        return self.details_dir / "image_audit.csv"

    @property
    def failed_attempts(self) -> Path:
        return self.details_dir / "failed_attempts.csv"

    @property
    def review_dir(self) -> Path:
        return self.root / "review"


@dataclass
class AuditResult:
    """Everything the chapter shows; all of it is also on disk under ``outputs``."""

    class_names: list[str]
    images: pd.DataFrame
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    reliability: pd.DataFrame
    coverage: pd.DataFrame
    at_threshold: dict
    box_metrics: pd.DataFrame
    failed_attempts: pd.DataFrame
    failure_counts: pd.DataFrame
    disagreements: pd.DataFrame
    pool: pd.DataFrame
    gt_boxes: pd.DataFrame
    pseudo_boxes: pd.DataFrame
    summary: dict
    outputs: AuditOutputs
    review_files: dict[str, Path] = field(default_factory=dict)

    @property
    def review_boxes(self) -> pd.DataFrame:
        """The pseudo-boxes of the strategy the review export and the gallery show."""
        strategy = self.summary.get("review_strategy")
        return self.pseudo_boxes[self.pseudo_boxes["strategy"] == strategy]


def build_summary(
    images: pd.DataFrame,
    per_class: pd.DataFrame,
    box_metrics: pd.DataFrame,
    counts: pd.DataFrame,
    *,
    confidence_threshold: float,
    n_bins: int = DEFAULT_N_BINS,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> dict:
    """The machine-readable audit: what later chapters read instead of recomputing.

    JSON-safe throughout (undefined ratios are ``null``). ``confidence_threshold`` is the value
    training applies; ``at_threshold`` says what it keeps.
    """
    answered = images[images["answered"]]
    ece = expected_calibration_error(answered["confidence"], answered["correct"], n_bins)
    annotators = sorted(images["annotator"].dropna().astype(str).unique())
    models = sorted(images["model"].dropna().astype(str).unique())
    box_summary: dict[str, dict] = {}
    for strategy, table in box_metrics.groupby("strategy", sort=True):
        indexed = table.drop(columns=["strategy"]).set_index("class_name")
        box_summary[str(strategy)] = {
            "all": _json_record(indexed.loc["all"].to_dict()),
            "per_class": {
                name: _json_record(row.to_dict())
                for name, row in indexed.drop(index="all").iterrows()
            },
        }
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "truth": "the image file's class; no_defect answers are wrong; failures are not covered",
        "annotators": annotators,
        "models": models,
        **accuracy_metrics(images),
        **macro_scores(per_class),
        "ece": _finite_or_none(ece),
        "ece_bins": n_bins,
        "confidence_threshold": float(confidence_threshold),
        "at_threshold": coverage_at(images, confidence_threshold),
        "coverage_table": [coverage_at(images, t) for t in REPORT_THRESHOLDS],
        "per_class": {str(name): _json_record(row.to_dict()) for name, row in per_class.iterrows()},
        "iou_threshold": iou_threshold,
        "box_scope": "answered images",
        "box_metrics": box_summary,
        "failures": {
            "failed_attempts": int(counts["failed_attempts"].sum()) if len(counts) else 0,
            "images_without_label": int(counts["images_without_label"].sum()) if len(counts) else 0,
            "by_kind": {str(kind): _json_record(row.to_dict()) for kind, row in counts.iterrows()},
        },
    }


def run_label_audit(
    config: StudyConfig,
    confidence_threshold: float | None = None,
    *,
    n_bins: int = DEFAULT_N_BINS,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    review_strategy: str | None = None,
) -> AuditResult:
    """Audit chapter 03's pseudo-labels against the pool's truth; write tables, exports, manifest.

    Reads the split (chapter 02) and the pseudo-labels (chapter 03, whose absence raises
    :func:`~cascade_defect.pseudo.read_pseudo_labels`'s error naming notebook 03). The marked
    threshold defaults to the profile's ``training.pseudo_confidence_threshold``, the value
    training applies, so the audit describes the labels training will actually keep. The review
    export shows the boxes of ``review_strategy`` (default: the annotator's own boxes when
    present).
    """
    from cascade_defect.review_export import choose_review_strategy, write_review_export

    threshold_source = "parameter" if confidence_threshold is not None else "profile"
    if confidence_threshold is None:
        confidence_threshold = config.profile.training.pseudo_confidence_threshold
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(f"confidence_threshold must lie in [0, 1], got {confidence_threshold}")
    layout = SplitLayout(config.paths.split_dir)
    split_inputs = {
        "classes": layout.classes_file,
        "pool_listing": layout.pool_listing,
        "pool_truth": layout.pool_truth,
        "pool_boxes": layout.pool_boxes,
    }
    require_inputs(split_inputs, dict.fromkeys(split_inputs, "notebook 02 (split)"))
    annotation = AnnotationOutputs(config.paths.annotation_dir)
    labels, pseudo_boxes = read_pseudo_labels(annotation)
    out = AuditOutputs(config.paths.audit_dir)
    inputs = {**split_inputs, "pseudo_labels": annotation.labels, "pseudo_boxes": annotation.boxes}
    if annotation.predictions.exists():
        inputs["predictions"] = annotation.predictions
    run = ChapterRun(
        "04_label_audit",
        config,
        out.root,
        parameters={
            "confidence_threshold": confidence_threshold,
            "n_bins": n_bins,
            "iou_threshold": iou_threshold,
            "review_strategy": review_strategy,
        },
        inputs=inputs,
    )
    class_names = layout.class_names()
    pool = read_pool_listing(layout)
    truth, gt_pixel = read_pool_ground_truth(layout)
    with run.timed("class_quality"):
        images = image_table(truth, gt_pixel, labels)
        per_class = per_class_metrics(images, class_names)
        confusion = confusion_table(images, class_names)
        answered = images[images["answered"]]
        reliability = reliability_table(answered["confidence"], answered["correct"], n_bins)
        curve = coverage_curve(images)
    with run.timed("box_quality"):
        gt_norm = normalise_gt_boxes(gt_pixel, pool)
        boxes = box_quality(gt_norm, pseudo_boxes, answered["image_id"], class_names, iou_threshold)
    with run.timed("failures"):
        if annotation.predictions.exists():
            store = AnnotationStore(annotation.predictions)
            pool_sha = dict(zip(pool["sha256"], pool["image_id"], strict=True))
            attempts = failed_attempts(store.records(), pool_sha)
        else:
            logger.warning(
                "%s not found: failures come from the labels table only", annotation.predictions
            )
            attempts = failed_attempts([])
        counts = failure_counts(images, attempts)
        wrong = disagreements(images)
    summary = build_summary(
        images,
        per_class,
        boxes,
        counts,
        confidence_threshold=confidence_threshold,
        n_bins=n_bins,
        iou_threshold=iou_threshold,
    )
    strategy = choose_review_strategy(pseudo_boxes["strategy"].dropna().unique(), review_strategy)
    with run.timed("write"):
        out.details_dir.mkdir(parents=True, exist_ok=True)
        per_class.to_csv(out.per_class)
        confusion.to_csv(out.confusion)
        reliability.to_csv(out.reliability, index=False)
        curve.to_csv(out.coverage, index=False)
        boxes.to_csv(out.box_metrics, index=False)
        counts.to_csv(out.failure_counts)
        images.to_csv(out.images, index=False)
        attempts.to_csv(out.failed_attempts, index=False)
        chosen = (
            pseudo_boxes[pseudo_boxes["strategy"] == strategy]
            if strategy
            else pseudo_boxes.iloc[:0]
        )
        review_files = write_review_export(
            out.review_dir,
            wrong,
            pool,
            gt_norm,
            chosen,
            class_names,
            document_root=config.work_dir,
        )
        summary["confidence_threshold_source"] = threshold_source
        summary["review_strategy"] = strategy
        summary["n_disagreements"] = len(wrong)
        out.summary.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    run.counts.update(
        n_images=summary["n_images"],
        n_answered=summary["n_answered"],
        accuracy=summary["accuracy"],
        macro_f1=summary["macro_f1"],
        ece=summary["ece"],
        coverage_at_threshold=summary["at_threshold"]["coverage"],
        accuracy_at_threshold=summary["at_threshold"]["accuracy"],
        n_disagreements=len(wrong),
    )
    run.write(
        {
            "summary": out.summary,
            "per_class": out.per_class,
            "confusion": out.confusion,
            "reliability": out.reliability,
            "coverage": out.coverage,
            "box_metrics": out.box_metrics,
            "failure_counts": out.failure_counts,
            "details": out.details_dir,
            "review": out.review_dir,
        }
    )
    logger.info(
        "audit: accuracy %s, macro F1 %s, ECE %s over %d images",
        summary["accuracy"],
        summary["macro_f1"],
        summary["ece"],
        summary["n_images"],
    )
    return AuditResult(
        class_names=class_names,
        images=images,
        per_class=per_class,
        confusion=confusion,
        reliability=reliability,
        coverage=curve,
        at_threshold=summary["at_threshold"],
        box_metrics=boxes,
        failed_attempts=attempts,
        failure_counts=counts,
        disagreements=wrong,
        pool=pool,
        gt_boxes=gt_norm,
        pseudo_boxes=pseudo_boxes,
        summary=summary,
        outputs=out,
        review_files=review_files,
    )


def read_audit_summary(audit_dir: Path) -> dict:
    """The audit summary for later chapters, or an error naming notebook 04."""
    path = AuditOutputs(Path(audit_dir)).summary
    if not path.exists():
        raise MissingInputError(f"{path} not found: run notebook 04 (label audit) first")
    return json.loads(path.read_text())


def headline(summary: Mapping[str, object]) -> pd.Series:
    """The few numbers the chapter opens with, in reading order."""
    at = dict(summary["at_threshold"])  # type: ignore[call-overload]
    return pd.Series(
        {
            "pool images": summary["n_images"],
            "answered": summary["n_answered"],
            "failed or missing": int(summary["n_failed"]) + int(summary["n_missing"]),
            "no_defect answers": summary["n_no_defect"],
            "accuracy (all pool images)": summary["accuracy"],
            "accuracy (answered images)": summary["accuracy_answered"],
            "accuracy (any class in the boxes)": summary["accuracy_any_box_class"],
            "macro F1": summary["macro_f1"],
            f"ECE ({summary['ece_bins']} bins)": summary["ece"],
            "confidence threshold": summary["confidence_threshold"],
            "coverage at threshold": at["coverage"],
            "accuracy at threshold": at["accuracy"],
        },
        name="value",
        dtype=object,
    )


# -- helpers ----------------------------------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _finite_or_none(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _mean_or_nan(values: pd.Series) -> float:
    return float(values.astype(float).mean()) if len(values) else math.nan


def _json_record(record: Mapping[str, object]) -> dict[str, object]:
    """Numpy scalars to Python and NaN to ``None``, so ``json.dumps(allow_nan=False)`` holds."""
    clean: dict[str, object] = {}
    for key, value in record.items():
        if isinstance(value, (bool, np.bool_)):
            clean[str(key)] = bool(value)
        elif isinstance(value, (int, np.integer)):
            clean[str(key)] = int(value)
        elif isinstance(value, (float, np.floating)):
            clean[str(key)] = _finite_or_none(value)
        else:
            clean[str(key)] = value
    return clean


def _excerpt(text: str | None, limit: int = _EXCERPT_CHARS) -> str | None:
    if text is None:
        return None
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
