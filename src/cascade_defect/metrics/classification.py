"""Image-level scores: accuracy, per-class precision/recall/F1 and confusion of any labeller.

One definition serves the label audit (where an unanswered image counts as wrong), the
classification track and the detector's top-detection accuracy on the test set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from cascade_defect.data.records import NO_DEFECT
from cascade_defect.metrics.detection import NO_DETECTION, MatchedDetections

NOT_ANSWERED = "not_answered"
"""Confusion-matrix column for images without an answer (failed or missing request)."""


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
    vanishing, so the rows always add up to the class's image count. Defect-free images (true
    class ``no_defect``) get their own last row when there are any, so their false alarms show.
    """
    predicted = images["predicted"].fillna(NOT_ANSWERED).astype(str)
    known = [*class_names, NO_DEFECT, NOT_ANSWERED]
    unexpected = sorted(set(predicted) - set(known))
    columns = [*class_names, NO_DEFECT, *unexpected, NOT_ANSWERED]
    true_class = images["true_class"].astype(str)
    rows = [*class_names, *([NO_DEFECT] if true_class.eq(NO_DEFECT).any() else [])]
    table = pd.crosstab(true_class, predicted)
    table = table.reindex(index=rows, columns=columns, fill_value=0).astype(int)
    table.index.name = "true_class"
    table.columns.name = "predicted"
    return table


def class_confusion(
    true_class: pd.Series, predicted: pd.Series, class_names: Sequence[str]
) -> pd.DataFrame:
    """Counts of true class (rows) against predicted class (columns), every class on both axes.

    For a classifier that always names one of ``class_names``; :func:`confusion_table` is the
    annotator's version, with columns for ``no_defect`` and unanswered images.
    """
    return pd.crosstab(
        pd.Categorical(true_class, categories=class_names),
        pd.Categorical(predicted, categories=class_names),
        rownames=["true_class"],
        colnames=["predicted"],
        dropna=False,
    )


def classifier_scores(
    predictions: pd.DataFrame, class_names: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-class scores (:func:`per_class_metrics`) and :func:`class_confusion` of a classifier.

    ``predictions`` holds one row per image with ``true_class`` and ``predicted_class``.
    """
    per_class = per_class_metrics(
        predictions.rename(columns={"predicted_class": "predicted"}), class_names
    )
    confusion = class_confusion(
        predictions["true_class"], predictions["predicted_class"], class_names
    )
    return per_class, confusion


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


def detector_image_class(predicted_class: pd.Series) -> pd.Series:
    """A detector's image class with "no detection" read as ``no_defect``.

    A detector that finds nothing on a defect-free image is right; on a defect image it is
    wrong either way, so datasets without defect-free images score as before.
    """
    return predicted_class.where(predicted_class != NO_DETECTION, NO_DEFECT)


def image_accuracy(predictions: pd.DataFrame, truth: Mapping[str, str] | pd.Series) -> float:
    """Share of images whose top detection names the image's class (no detection is right only
    on a defect-free image)."""
    truth = pd.Series(truth)
    expected = predictions["image_id"].map(truth)
    return float((detector_image_class(predictions["predicted_class"]) == expected).mean())
