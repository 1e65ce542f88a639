"""How the labelling cost moves with one assumption, and the costs it is compared against.

:func:`cost_sweep` varies one input of the cost model at a time (prices, image tokens, seeds,
pool size); the rest prices the alternatives: labelling by hand or by a vendor, the break-even
pool size and YOLO's own inference cost.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Literal, get_args

import pandas as pd

from cascade_defect.costs.model import (
    ALL_MODES,
    DEFAULT_BILLING,
    NEU_DET_POOL_SIZE,
    BillingOptions,
    ModeTuple,
    PromptSpec,
    _config_row,
)


def human_labelling_cost(
    n_images: int,
    boxes_per_image: float,
    seconds_per_box: float,
    hourly_rate: float,
    seconds_per_image: float = 0.0,
) -> float:
    """Labour cost of labelling by hand: time per box (and per image) times a wage.

    Box-level: ``seconds_per_box`` (e.g. extreme clicking vs drawing). Image-level (class
    only): ``boxes_per_image=0`` and ``seconds_per_image`` for the decision.
    """
    if min(n_images, boxes_per_image, seconds_per_box, hourly_rate, seconds_per_image) < 0:
        raise ValueError("inputs must be non-negative")
    seconds = n_images * (boxes_per_image * seconds_per_box + seconds_per_image)
    return seconds / 3600.0 * hourly_rate


def vendor_labelling_cost(
    n_images: int,
    boxes_per_image: float,
    price_per_box: float,
    price_per_image: float = 0.0,
    labellers_per_item: int = 1,
) -> float:
    """Cost at a labelling vendor's unit prices; units multiply by labellers per item."""
    if min(n_images, boxes_per_image, price_per_box, price_per_image) < 0:
        raise ValueError("inputs must be non-negative")
    if labellers_per_item < 1:
        raise ValueError("labellers_per_item must be >= 1")
    per_image = boxes_per_image * price_per_box + price_per_image
    return n_images * per_image * labellers_per_item


def break_even_images(
    human_cost_per_image: float,
    mllm_cost_per_image: float,
    mllm_fixed_cost: float = 0.0,
) -> float:
    """Pool size above which the MLLM route is cheaper than human labelling.

    ``mllm_fixed_cost`` is what the MLLM route pays regardless of pool size (labelling the
    seed images, prompt development). Returns 0 when the MLLM is cheaper from the first
    image with no fixed cost, and ``inf`` when it is never cheaper.
    """
    margin = human_cost_per_image - mllm_cost_per_image
    if mllm_fixed_cost < 0:
        raise ValueError("mllm_fixed_cost must be non-negative")
    if margin <= 0:
        return math.inf
    return mllm_fixed_cost / margin


def yolo_cost_per_image(latency_s: float, vm_usd_per_hour: float) -> float:
    """Dollars of VM time per image at a measured per-image latency (fully utilised VM)."""
    if latency_s < 0 or vm_usd_per_hour < 0:
        raise ValueError("latency and price must be non-negative")
    return latency_s * vm_usd_per_hour / 3600.0


def cost_per_1000_images(
    mllm_cost_per_image: float,
    yolo_latency_s: float,
    vm_usd_per_hour: float,
    escalation_rate: float,
) -> pd.Series:
    """Dollars per 1,000 images for MLLM-only, YOLO-only and the cascade.

    The cascade runs YOLO on every image and sends the share ``escalation_rate`` (e.g.
    low-confidence detections) to the MLLM; the escalated images pay both.
    """
    if not 0.0 <= escalation_rate <= 1.0:
        raise ValueError("escalation_rate must be within [0, 1]")
    if mllm_cost_per_image < 0:
        raise ValueError("mllm_cost_per_image must be non-negative")
    yolo = yolo_cost_per_image(yolo_latency_s, vm_usd_per_hour)
    return pd.Series(
        {
            "mllm_only": 1000 * mllm_cost_per_image,
            "yolo_only": 1000 * yolo,
            "cascade": 1000 * (yolo + escalation_rate * mllm_cost_per_image),
        },
        name="usd_per_1000_images",
    )


SweepParameter = Literal["price_multiplier_value", "tokens_per_image", "n_seeds", "pool_size"]
"""What :func:`cost_sweep` varies; each is also the name of the swept column.

* ``price_multiplier_value``: every price scaled by a factor (price cuts or rises);
* ``tokens_per_image``: each image (seed and query) costs that many tokens;
* ``n_seeds``: few-shot seeds, each adding its image and box text to the prefix;
* ``pool_size``: images labelled (linear per request, so mostly a check); replaces ``n_images``.
"""


def cost_sweep(
    spec: PromptSpec,
    parameter: SweepParameter,
    values: Iterable[float],
    models: Sequence[str],
    n_images: int = NEU_DET_POOL_SIZE,
    modes: Sequence[ModeTuple] = ALL_MODES,
    billing: BillingOptions = DEFAULT_BILLING,
) -> pd.DataFrame:
    """The pool's labelling cost per model and billing mode as one parameter varies.

    One row per value, model and mode: the value in a column named after ``parameter``, then
    the cost model's row for that configuration. ``modes`` set ``billing``'s mode, and a
    ``price_multiplier_value`` sweep its price multiplier.
    """
    rows = []
    for value in values:
        variant, n, multiplier = _swept(spec, parameter, value, n_images)
        point = billing
        if multiplier is not None:  # validated again: a negative multiplier is refused
            point = BillingOptions(**{**billing.model_dump(), "price_multiplier": multiplier})
        for model, (batch, caching) in itertools.product(models, modes):
            row = _config_row(model, variant, n, point.with_mode(batch, caching))
            rows.append({parameter: value, **row})
    return pd.DataFrame(rows)


def _swept(
    spec: PromptSpec, parameter: SweepParameter, value: float, n_images: int
) -> tuple[PromptSpec, int, float | None]:
    """The prompt, pool size and price multiplier (None: unchanged) of one point of a sweep."""
    if parameter == "price_multiplier_value":
        return spec, n_images, float(value)
    if parameter == "tokens_per_image":
        return replace(spec, image_tokens_override=int(value)), n_images, None
    if parameter == "n_seeds":
        return spec.with_seeds(int(value)), n_images, None
    if parameter == "pool_size":
        return spec, int(value), None
    raise ValueError(f"unknown sweep parameter {parameter!r}; one of {get_args(SweepParameter)}")
