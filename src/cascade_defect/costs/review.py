"""What a review budget costs: person-hours and dollars for "pseudo-labels + k reviewed images".

The review-budget benchmark (``scripts/bench_review_budget.py``) measures how much of the human
detector's mAP50 a pseudo-label source keeps when a person reviews ``k`` pool images. This module
prices each point beside the two ends, so chapter 07 can set total cost against the ratio:

- all human: every pool image boxed from scratch (``seconds_per_box_conventional``);
- pseudo only: the annotator's price for the pool, no person;
- pseudo + k reviewed (up to the whole pool): the annotator's price plus a person checking and correcting the proposed
  boxes of ``k`` images (``seconds_per_box_correction``), which is faster than drawing them.

Labour uses :func:`~cascade_defect.costs.sweeps.human_labelling_cost`, the one labour formula.
"""

from __future__ import annotations

import math

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from cascade_defect.costs.references import reference
from cascade_defect.costs.sweeps import human_labelling_cost


class ReviewPricing(BaseModel):
    """The figures a review budget is priced with (cost references unless a user has their own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_pool: int = Field(ge=0)
    boxes_per_image: float = Field(ge=0)
    annotator_usd_per_image: float = Field(ge=0)
    seconds_per_box_drawn: float = Field(gt=0)
    seconds_per_box_corrected: float = Field(gt=0)
    hourly_rate: float = Field(ge=0)


def review_pricing(
    n_pool: int, boxes_per_image: float, annotator_usd_per_image: float
) -> ReviewPricing:
    """Pricing from the cost references: 35 s to draw a box, 5.8 s to correct a proposed one,
    the US office-support wage."""
    return ReviewPricing(
        n_pool=n_pool,
        boxes_per_image=boxes_per_image,
        annotator_usd_per_image=annotator_usd_per_image,
        seconds_per_box_drawn=reference("human_labelling.seconds_per_box_conventional").value,
        seconds_per_box_corrected=reference("human_labelling.seconds_per_box_correction").value,
        hourly_rate=reference("human_labelling.hourly_rate_us_office_support").value,
    )


def _row(
    option: str,
    order: str,
    k: int,
    pricing: ReviewPricing,
    ratio: float,
    ratio_low: float,
    ratio_high: float,
    seconds_per_box: float,
    annotator: bool,
) -> dict[str, object]:
    labour = human_labelling_cost(k, pricing.boxes_per_image, seconds_per_box, pricing.hourly_rate)
    hours = k * pricing.boxes_per_image * seconds_per_box / 3600.0
    machine = pricing.annotator_usd_per_image * pricing.n_pool if annotator else 0.0
    return {
        "option": option,
        "order": order,
        "k": k,
        "person_hours": hours,
        "labour_usd": labour,
        "annotator_usd": machine,
        "total_usd": labour + machine,
        "ratio": ratio,
        "ratio_low": ratio_low,
        "ratio_high": ratio_high,
    }


def review_budget_costs(budgets: pd.DataFrame, pricing: ReviewPricing) -> pd.DataFrame:
    """One row per option: all human, pseudo only, and each trained ``pseudo + k reviewed``.

    ``budgets`` is the benchmark's table (``source, order, k, ratio, ratio_low, ratio_high``);
    its ``human`` and ``pseudo`` rows give the two ends their ratios (1 and the pseudo share).
    Budgets of 0 and of the whole pool are those ends, so they are not repeated; the whole pool
    reviewed is priced once as its own option (its labels are the human ones, corrected rather
    than drawn, which assumes a reviewer who corrects every box reaches the drawn boxes' quality).
    """
    nan = math.nan

    def ratios(source: str) -> tuple[float, float, float]:
        rows = budgets[budgets["source"] == source]
        if rows.empty:
            return nan, nan, nan
        first = rows.iloc[0]
        return float(first["ratio"]), float(first["ratio_low"]), float(first["ratio_high"])

    rows = [
        _row(
            "all human (every box drawn)",
            "-",
            pricing.n_pool,
            pricing,
            1.0,
            1.0,
            1.0,
            pricing.seconds_per_box_drawn,
            annotator=False,
        ),
        _row(
            f"pseudo + all {pricing.n_pool} reviewed",
            "-",
            pricing.n_pool,
            pricing,
            *ratios("human"),
            pricing.seconds_per_box_corrected,
            annotator=True,
        ),
        _row(
            "pseudo only",
            "-",
            0,
            pricing,
            *ratios("pseudo"),
            pricing.seconds_per_box_corrected,
            annotator=True,
        ),
    ]
    reviewed = budgets[
        budgets["order"].fillna("").ne("")
        & budgets["k"].between(1, pricing.n_pool - 1, inclusive="both")
    ]
    for row in reviewed.sort_values(["order", "k"]).itertuples(index=False):
        rows.append(
            _row(
                f"pseudo + {int(row.k)} reviewed ({row.order})",
                str(row.order),
                int(row.k),
                pricing,
                float(row.ratio),
                float(row.ratio_low),
                float(row.ratio_high),
                pricing.seconds_per_box_corrected,
                annotator=True,
            )
        )
    return pd.DataFrame(rows)
