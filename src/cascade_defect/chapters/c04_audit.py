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
- **``no_defect`` is wrong on a defect image.** Every NEU-DET image shows a defect, so there a
  ``no_defect`` answer is a wrong answer (it is kept in the confusion matrix as its own column).
  A dataset with defect-free images (true class ``no_defect``, no boxes) scores ``no_defect`` as
  their right answer, and the audit adds defect recall and the false-alarm rate on them.
- **Failures are not covered.** A failed or missing request yields no label: it counts as wrong in
  ``accuracy`` (share of the pool labelled correctly), is excluded from ``accuracy_answered``, and
  is never kept by a confidence threshold.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cascade_defect.annotate.review_export import review_order
from cascade_defect.annotate.schema import NO_DEFECT, AnnotationRecord
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.chapters.c03_annotation import AnnotationOutputs, read_pseudo_labels
from cascade_defect.data.split import SplitLayout, read_pool_ground_truth, read_pool_listing
from cascade_defect.manifest import ChapterRun, MissingInputError, require_inputs
from cascade_defect.metrics.box_quality import (
    DEFAULT_IOU_THRESHOLD,
    box_quality,
    normalise_gt_boxes,
)
from cascade_defect.metrics.calibration import (
    DEFAULT_N_BINS,
    coverage_at,
    coverage_curve,
    expected_calibration_error,
    reliability_table,
)
from cascade_defect.metrics.classification import (
    _finite_or_none,
    accuracy_metrics,
    confusion_table,
    macro_scores,
    per_class_metrics,
)
from cascade_defect.metrics.defect_rates import class_defect_rates
from cascade_defect.settings import StudyConfig

logger = logging.getLogger(__name__)


SUMMARY_SCHEMA_VERSION = 1


REPORT_THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
"""Thresholds always tabulated in the summary, so later chapters can compare without re-running."""


_EXCERPT_CHARS = 300


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
    of the training set. The order is :func:`review_order`'s, which the review budget reuses.
    """
    ordered = review_order(images)
    wrong = ordered[ordered["answered"] & ~ordered["correct"]]
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
        "truth": (
            "the image file's class (no_defect for a defect-free image); a no_defect answer is "
            "wrong on a defect image; failures are not covered"
        ),
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
        "defect_scope": "answered images",
        "defect_rates": class_defect_rates(answered["true_class"], answered["predicted"]),
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
    from cascade_defect.annotate.review_export import choose_review_strategy, write_review_export

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
        defect_recall=summary["defect_rates"]["defect_recall"],
        false_alarm_rate=summary["defect_rates"]["false_alarm_rate"],
        n_defect_free=summary["defect_rates"]["n_defect_free"],
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
