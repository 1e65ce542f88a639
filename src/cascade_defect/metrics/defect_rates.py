"""Defect against no defect: defect recall and false-alarm rate of any image-level decision.

On a production line most images show no defect, and class accuracy hides the two errors that
matter there: a defect let through (defect recall) and a good part stopped (false alarms on
defect-free images). One definition serves the annotator's pool labels (chapter 04), each
detector on the test set and the cascade (chapter 06). A dataset without defect-free images
(NEU-DET) has no false-alarm rate: it is left undefined (``None`` / NaN), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix

from cascade_defect.data.records import NO_DEFECT
from cascade_defect.metrics.classification import _finite_or_none
from cascade_defect.metrics.detection import NO_DETECTION
from cascade_defect.metrics.kpi import CONFIDENCE_GRID

DEFAULT_DETECTOR_CONFIDENCE = 0.25
"""ultralytics' default ``conf`` for prediction: the threshold when a model has no KPI threshold."""

NOT_DEFECTIVE = frozenset({NO_DEFECT, NO_DETECTION})
"""Image classes that say "nothing to stop": the annotator's ``no_defect``, a detector's ``none``."""

NO_DEFECT_FREE_NOTE = "no defect-free images in this dataset: the false-alarm rate is undefined"


def truly_defective(true_class: Sequence[str] | pd.Series) -> np.ndarray:
    """True for every image whose true class is a defect class (not ``no_defect``)."""
    return np.asarray(pd.Series(true_class, dtype=object).astype(str) != NO_DEFECT, dtype=bool)


def called_defective(predicted_class: Sequence[object] | pd.Series) -> np.ndarray:
    """True for every image given a defect class; ``no_defect`` and ``none`` clear the image.

    A missing answer (NaN) is not a clearance: nobody passed the image as good, so it counts
    as called defective (it would go to a person).
    """
    values = pd.Series(predicted_class, dtype=object)
    return np.asarray(~values.isin(NOT_DEFECTIVE), dtype=bool)


def has_defect_free(true_class: Sequence[str] | pd.Series) -> bool:
    """Whether any image is defect-free, i.e. whether a false-alarm rate can exist."""
    return bool((~truly_defective(true_class)).any())


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; NaN for no trials.

    Wilson rather than the normal approximation: the rates of interest sit near 0 or 1 on a
    few dozen test images, where the normal interval leaves [0, 1].
    """
    if trials <= 0:
        return math.nan, math.nan
    interval = binomtest(int(successes), int(trials)).proportion_ci(level, method="wilson")
    return float(interval.low), float(interval.high)


def defect_rates(
    is_defective: Sequence[bool] | np.ndarray,
    called: Sequence[bool] | np.ndarray,
    level: float = 0.95,
) -> dict[str, float | int | None]:
    """Defect recall and false-alarm rate with their counts and Wilson intervals.

    ``defect_recall`` is the share of truly defective images called defective;
    ``false_alarm_rate`` the share of defect-free images called defective. A rate without
    images to divide by is ``None`` (JSON-safe), as are its interval bounds.
    """
    truth = np.asarray(is_defective, dtype=bool)
    decided = np.asarray(called, dtype=bool)
    if truth.shape != decided.shape:
        raise ValueError(f"{truth.size} true flags against {decided.size} decisions")
    if truth.size:
        (tn, fp), (fn, tp) = confusion_matrix(truth, decided, labels=[False, True])
    else:
        tn = fp = fn = tp = 0
    n_defective, n_defect_free = int(tp + fn), int(tn + fp)
    recall_low, recall_high = wilson_interval(int(tp), n_defective, level)
    alarm_low, alarm_high = wilson_interval(int(fp), n_defect_free, level)
    return {
        "n_images": int(truth.size),
        "n_defective": n_defective,
        "n_defect_free": n_defect_free,
        "n_defects_found": int(tp),
        "n_defects_missed": int(fn),
        "n_false_alarms": int(fp),
        "n_cleared_correctly": int(tn),
        "defect_recall": _rate(int(tp), n_defective),
        "defect_recall_ci_low": _finite_or_none(recall_low),
        "defect_recall_ci_high": _finite_or_none(recall_high),
        "false_alarm_rate": _rate(int(fp), n_defect_free),
        "false_alarm_rate_ci_low": _finite_or_none(alarm_low),
        "false_alarm_rate_ci_high": _finite_or_none(alarm_high),
    }


def class_defect_rates(
    true_class: Sequence[str] | pd.Series,
    predicted_class: Sequence[object] | pd.Series,
    level: float = 0.95,
) -> dict[str, float | int | None]:
    """:func:`defect_rates` of a labeller that names an image class (annotator, classifier)."""
    return defect_rates(truly_defective(true_class), called_defective(predicted_class), level)


def detector_defect_rates(
    image_level: pd.DataFrame,
    truth: Mapping[str, str] | pd.Series,
    threshold: float,
    level: float = 0.95,
) -> dict[str, float | int | None]:
    """:func:`defect_rates` of a detector: an image is defective when a box reaches ``threshold``.

    ``image_level`` holds ``image_id, top_confidence`` (no box: confidence 0), one row per
    test image; ``truth`` maps image ids to their true class.
    """
    true_class = image_level["image_id"].astype(str).map(pd.Series(truth, dtype=object))
    called = image_level["top_confidence"].to_numpy(dtype=float) >= threshold
    return {
        "threshold": float(threshold),
        **defect_rates(truly_defective(true_class), called, level),
    }


def operating_thresholds(
    kpi: pd.DataFrame, sources: Sequence[str], default: float = DEFAULT_DETECTOR_CONFIDENCE
) -> dict[str, float]:
    """Each detector's confidence threshold: the KPI's (best F1) threshold, else ``default``.

    The KPI table is where the comparison already picks one threshold per model to deploy; a
    model without one (no right detection at any threshold) falls back to ultralytics' default.
    """
    chosen = kpi["threshold"] if "threshold" in kpi else pd.Series(dtype=float)
    thresholds = {}
    for source in sources:
        value = _finite_or_none(chosen.get(source))
        thresholds[source] = float(value) if value is not None else float(default)
    return thresholds


def detector_defect_table(
    image_level: Mapping[str, pd.DataFrame],
    truth: Mapping[str, str] | pd.Series,
    thresholds: Mapping[str, float],
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per detector (``source``): its :func:`detector_defect_rates` at its threshold."""
    rows = [
        {"source": source, **detector_defect_rates(frame, truth, thresholds[source], level)}
        for source, frame in image_level.items()
    ]
    columns = ["source", "threshold", *defect_rates([], []).keys()]
    return pd.DataFrame(rows, columns=columns).set_index("source").astype({"threshold": float})


def detector_defect_curve(
    image_level: Mapping[str, pd.DataFrame],
    truth: Mapping[str, str] | pd.Series,
    thresholds: Sequence[float] | np.ndarray = CONFIDENCE_GRID,
) -> pd.DataFrame:
    """Defect recall and false-alarm rate of every detector over the KPI's confidence grid.

    The trade-off a single operating threshold hides: columns ``source, threshold,
    defect_recall, false_alarm_rate`` (NaN where a rate has no images to divide by).
    """
    rows = []
    for source, frame in image_level.items():
        for threshold in thresholds:
            rates = detector_defect_rates(frame, truth, float(threshold))
            rows.append(
                {
                    "source": source,
                    "threshold": float(threshold),
                    "defect_recall": nan_if_none(rates["defect_recall"]),
                    "false_alarm_rate": nan_if_none(rates["false_alarm_rate"]),
                }
            )
    return pd.DataFrame(rows, columns=["source", "threshold", "defect_recall", "false_alarm_rate"])


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def nan_if_none(value: object) -> float:
    """A rate for a table column: ``None`` (no images to divide by) becomes NaN."""
    return math.nan if value is None else float(value)  # type: ignore[arg-type]
