"""Whether an annotator's confidence means what it says: reliability bins, ECE and coverage curves.

A confidence threshold decides which pseudo-labels train the detector, so the audit and the
benchmarks need one definition of calibration; this is it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from cascade_defect.metrics.classification import _ratio

logger = logging.getLogger(__name__)


DEFAULT_N_BINS = 10


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
