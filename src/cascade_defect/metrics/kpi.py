"""The deployment bar: does a detector reach the KPI's mAP, precision and recall at some threshold?

mAP is threshold-free, precision and recall are not, so the confidence threshold is swept and
the one meeting the bar (or the reason none does) is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cascade_defect.metrics.detection import (
    IOU_THRESHOLDS,
    MatchedDetections,
    ap_per_class,
    detection_metrics,
    precision_recall_at,
)

CONFIDENCE_GRID = np.round(np.arange(0.05, 0.96, 0.01), 2)
"""Confidence thresholds swept for precision/recall and the KPI (rounded: 0.42, not 0.42000000000000004)."""


@dataclass(frozen=True)
class KpiTarget:
    """Azure Custom Vision's deployment bar: mAP, precision and recall at one threshold."""

    map50: float = 0.85
    precision: float = 0.80
    recall: float = 0.80
    iou: float = 0.5


DEFAULT_KPI_TARGET = KpiTarget()


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
    target: KpiTarget = DEFAULT_KPI_TARGET,
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


def kpi_tables(
    matched: Mapping[str, MatchedDetections], target: KpiTarget = DEFAULT_KPI_TARGET
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model: the KPI verdict (one row per source) and the threshold sweep (stacked)."""
    verdicts = [{"source": source, **kpi_threshold(m, target)} for source, m in matched.items()]
    sweeps = [threshold_sweep(m).assign(source=source) for source, m in matched.items()]
    return (
        pd.DataFrame(verdicts).set_index("source") if verdicts else pd.DataFrame(),
        pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame(),
    )
