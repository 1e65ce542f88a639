"""TODO docstring for metrics.bootstrap
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cascade_defect.metrics.detection import MatchedDetections, ap_per_class
from cascade_defect.progress import progress_disabled
from cascade_defect.train.sources import (
    HUMAN,
    PSEUDO,
)


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


def accuracy_samples(correct: np.ndarray, multiplicities: np.ndarray) -> np.ndarray:
    """Accuracy of each bootstrap resample (rows of per-image multiplicities)."""
    correct = np.asarray(correct, dtype=float)
    return multiplicities @ correct / multiplicities.sum(axis=1)


def paired_difference(
    samples: Mapping[str, np.ndarray], estimates: Mapping[str, float], target_ratio: float
) -> dict[str, Any]:
    """``pseudo − human`` accuracy with its paired bootstrap interval, and the ratio verdict."""
    if HUMAN not in estimates or PSEUDO not in estimates:
        return {}
    difference = samples[PSEUDO] - samples[HUMAN]
    low, high = percentile_interval(difference)
    ratio = estimates[PSEUDO] / estimates[HUMAN] if estimates[HUMAN] else float("nan")
    return {
        "human_accuracy": estimates[HUMAN],
        "pseudo_accuracy": estimates[PSEUDO],
        "difference": estimates[PSEUDO] - estimates[HUMAN],
        "difference_ci_low": low,
        "difference_ci_high": high,
        "ratio": ratio,
        "target_ratio": target_ratio,
        "target_met": bool(ratio >= target_ratio),
    }
