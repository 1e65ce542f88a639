"""Paired bootstrap over test images: intervals per model and one comparison schema for both tracks.

Every model is scored on the same resamples of the test images, so the difference between two
models is paired; detection (mAP50) and classification (accuracy) report it as one
:class:`Comparison`, which chapter 06 writes and the findings read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError
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


def bootstrap_map50_per_model(
    matched: Mapping[str, MatchedDetections], multiplicities: np.ndarray, progress: bool = False
) -> dict[str, np.ndarray]:
    """:func:`bootstrap_map50` of every model on the same resamples, so differences are paired."""
    return {
        source: bootstrap_map50(m, multiplicities, progress=progress, desc=f"bootstrap {source}")
        for source, m in matched.items()
    }


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap samples."""
    alpha = (1 - level) / 2
    low, high = np.nanquantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


DEFAULT_TARGET_RATIO = 0.97
"""The study's bar: the candidate must reach this share of the reference's score."""

METRIC_LABELS = {"map50": "mAP50", "accuracy": "accuracy"}


class Comparison(BaseModel):
    """A candidate model against a reference on one metric, paired over the same resamples.

    ``difference`` is candidate − reference and ``ratio`` candidate / reference, each with its
    percentile interval at ``level``; the verdict ``target_met`` asks whether the ratio's
    estimate reaches ``target_ratio``. Both tracks of chapter 06 write this to ``comparison.json``.
    """

    model_config = ConfigDict(extra="forbid")

    metric: str
    reference: str
    candidate: str
    reference_value: float
    candidate_value: float
    difference: float
    difference_ci: tuple[float, float]
    ratio: float
    ratio_ci: tuple[float, float]
    share_of_samples_candidate_worse: float
    level: float
    target_ratio: float
    target_met: bool

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)


def paired_comparison(
    estimates: Mapping[str, float],
    samples: Mapping[str, np.ndarray],
    *,
    metric: str,
    reference: str = HUMAN,
    candidate: str = PSEUDO,
    target_ratio: float = DEFAULT_TARGET_RATIO,
    level: float = 0.95,
) -> Comparison | None:
    """Candidate vs reference from point estimates and paired bootstrap samples; None without both.

    The ratio's interval is taken over the resamples where it is finite (a resample can score
    the reference 0); it is NaN when there is none.
    """
    if not {reference, candidate} <= set(samples) or not {reference, candidate} <= set(estimates):
        return None
    reference_value = float(estimates[reference])
    candidate_value = float(estimates[candidate])
    difference = samples[candidate] - samples[reference]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = samples[candidate] / samples[reference]
    finite = np.isfinite(ratios)
    ratio = candidate_value / reference_value if reference_value else float("nan")
    return Comparison(
        metric=metric,
        reference=reference,
        candidate=candidate,
        reference_value=reference_value,
        candidate_value=candidate_value,
        difference=candidate_value - reference_value,
        difference_ci=percentile_interval(difference, level),
        ratio=ratio,
        ratio_ci=percentile_interval(ratios[finite], level)
        if finite.any()
        else (float("nan"), float("nan")),
        share_of_samples_candidate_worse=float(np.mean(difference < 0)),
        level=level,
        target_ratio=target_ratio,
        target_met=bool(ratio >= target_ratio),
    )


def bootstrap_table(
    estimates: Mapping[str, float],
    samples: Mapping[str, np.ndarray],
    *,
    reference: str = HUMAN,
    candidate: str = PSEUDO,
    level: float = 0.95,
    metric: str = "map50",
    target_ratio: float = DEFAULT_TARGET_RATIO,
) -> tuple[pd.DataFrame, Comparison | None]:
    """Each model's estimate with its interval, and the paired comparison candidate vs reference."""
    rows = []
    for source, values in samples.items():
        low, high = percentile_interval(values, level)
        rows.append({"source": source, metric: estimates[source], "ci_low": low, "ci_high": high})
    table = pd.DataFrame(rows).set_index("source") if rows else pd.DataFrame()
    comparison = paired_comparison(
        estimates,
        samples,
        metric=metric,
        reference=reference,
        candidate=candidate,
        target_ratio=target_ratio,
        level=level,
    )
    return table, comparison


def accuracy_samples(correct: np.ndarray, multiplicities: np.ndarray) -> np.ndarray:
    """Accuracy of each bootstrap resample (rows of per-image multiplicities)."""
    correct = np.asarray(correct, dtype=float)
    return multiplicities @ correct / multiplicities.sum(axis=1)


def comparison_table(
    comparison: Comparison | Mapping[str, object] | None, target_ratio: float | None = None
) -> pd.DataFrame:
    """A comparison as a readable one-column table, with the target verdict.

    ``target_ratio`` defaults to the comparison's own target; a dict is read as a
    :class:`Comparison` (as ``model_dump`` or ``comparison.json`` hold it).
    """
    if not comparison:
        return pd.DataFrame({"value": ["needs both the reference and the candidate model"]})
    if not isinstance(comparison, Comparison):
        comparison = Comparison.model_validate(comparison)
    target = comparison.target_ratio if target_ratio is None else target_ratio
    label = comparison.metric_label
    low, high = comparison.ratio_ci
    rows = {
        "reference": comparison.reference,
        "candidate": comparison.candidate,
        f"{label} difference (candidate − reference)": round(comparison.difference, 4),
        f"{comparison.level:.0%} interval of the difference": tuple(
            round(v, 4) for v in comparison.difference_ci
        ),
        f"{label} ratio (candidate / reference)": round(comparison.ratio, 4),
        f"{comparison.level:.0%} interval of the ratio": (round(low, 4), round(high, 4)),
        f"estimate reaches {target:.0%} of the reference": comparison.ratio >= target,
        f"whole interval at or above {target:.0%}": low >= target,
        f"{target:.0%} still inside the interval": low <= target <= high,
        "share of resamples where the candidate is worse": round(
            comparison.share_of_samples_candidate_worse, 3
        ),
    }
    return pd.Series(rows, name="value").to_frame()


def write_comparison(path: Path, comparison: Comparison | None, **extra: Any) -> None:
    """``comparison.json``: the comparison (null without both models) beside the track's extras.

    Both tracks of chapter 06 write this layout, so :func:`read_comparison` reads either.
    """
    payload = {"comparison": comparison.model_dump() if comparison else None, **extra}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")


def read_comparison(path: Path) -> tuple[Comparison | None, dict[str, Any]]:
    """A ``comparison.json``'s comparison (None when it holds none) and its other entries."""
    payload = json.loads(path.read_text())
    raw = payload.pop("comparison", None)
    try:
        return (Comparison.model_validate(raw) if raw else None), payload
    except ValidationError as error:
        raise ValueError(
            f"{path} does not hold a comparison ({error}): re-run chapter 06"
        ) from error
