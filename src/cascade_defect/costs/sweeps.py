"""TODO docstring for costs.sweeps
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from cascade_defect.costs.model import (
    ALL_MODES,
    DEFAULT_CACHE_HIT_RATE,
    NEU_DET_POOL_SIZE,
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


def _sweep(
    parameter: str,
    values: Iterable[Any],
    make: Callable[[Any], tuple[PromptSpec, int, float]],
    models: Sequence[str],
    modes: Sequence[ModeTuple],
    cache_hit_rate: float,
    batch_caching: bool | None,
) -> pd.DataFrame:
    rows = []
    for value in values:
        spec, n_images, multiplier = make(value)
        for model, (batch, caching) in itertools.product(models, modes):
            row = _config_row(
                model, spec, n_images, batch, caching, cache_hit_rate, batch_caching, multiplier
            )
            rows.append({parameter: value, **row})
    return pd.DataFrame(rows)


def cost_vs_price_multiplier(
    spec: PromptSpec,
    multipliers: Iterable[float],
    models: Sequence[str],
    n_images: int = NEU_DET_POOL_SIZE,
    modes: Sequence[ModeTuple] = ALL_MODES,
    cache_hit_rate: float = DEFAULT_CACHE_HIT_RATE,
    batch_caching: bool | None = None,
) -> pd.DataFrame:
    """Cost if every price were scaled by a factor (price cuts or rises)."""
    return _sweep(
        "price_multiplier_value",
        multipliers,
        lambda m: (spec, n_images, float(m)),
        models,
        modes,
        cache_hit_rate,
        batch_caching,
    )


def cost_vs_tokens_per_image(
    spec: PromptSpec,
    tokens_per_image: Iterable[int],
    models: Sequence[str],
    n_images: int = NEU_DET_POOL_SIZE,
    modes: Sequence[ModeTuple] = ALL_MODES,
    cache_hit_rate: float = DEFAULT_CACHE_HIT_RATE,
    batch_caching: bool | None = None,
) -> pd.DataFrame:
    """Cost if each image (seed and query) cost a given number of tokens."""
    return _sweep(
        "tokens_per_image",
        tokens_per_image,
        lambda t: (replace(spec, image_tokens_override=int(t)), n_images, 1.0),
        models,
        modes,
        cache_hit_rate,
        batch_caching,
    )


def cost_vs_seed_images(
    spec: PromptSpec,
    seed_counts: Iterable[int],
    models: Sequence[str],
    n_images: int = NEU_DET_POOL_SIZE,
    modes: Sequence[ModeTuple] = ALL_MODES,
    cache_hit_rate: float = DEFAULT_CACHE_HIT_RATE,
    batch_caching: bool | None = None,
) -> pd.DataFrame:
    """Cost by number of few-shot seeds; each seed adds its image and box text to the prefix."""
    return _sweep(
        "n_seeds",
        seed_counts,
        lambda n: (spec.with_seeds(int(n)), n_images, 1.0),
        models,
        modes,
        cache_hit_rate,
        batch_caching,
    )


def cost_vs_pool_size(
    spec: PromptSpec,
    pool_sizes: Iterable[int],
    models: Sequence[str],
    modes: Sequence[ModeTuple] = ALL_MODES,
    cache_hit_rate: float = DEFAULT_CACHE_HIT_RATE,
    batch_caching: bool | None = None,
) -> pd.DataFrame:
    """Cost as the unlabelled pool grows (linear per request, so this is mostly a check)."""
    return _sweep(
        "pool_size",
        pool_sizes,
        lambda n: (spec, int(n), 1.0),
        models,
        modes,
        cache_hit_rate,
        batch_caching,
    )
