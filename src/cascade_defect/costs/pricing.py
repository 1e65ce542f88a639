"""Per-model OpenAI prices and image-token rules, loaded from packaged data.

Prices change more often than code, so they live in ``data/pricing.yaml`` with a
source and a date for each entry; this module only interprets them. Image tokens
follow the "Calculating costs" rules of OpenAI's Images and vision guide: 512 px
tiles for the gpt-4o / gpt-4.1 / gpt-5 family, 32 px patches times a multiplier for
the small patch-based models.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

PRICING_FILE = "pricing.yaml"
TOKENS_PER_MTOK = 1_000_000

# Tile rule constants (OpenAI vision guide, "GPT-4o, GPT-4.1, GPT-4o-mini, ..." section).
TILE_FIT_BOX_PX = 2048
TILE_SHORT_SIDE_PX = 768
TILE_SIZE_PX = 512

# Patch rule constants (OpenAI vision guide, "GPT-4.1-mini, GPT-4.1-nano, o4-mini" section).
PATCH_SIZE_PX = 32
PATCH_CAP = 1536

DETAILS = ("low", "high", "auto")
IMAGE_RULES = ("tile", "patch")

_SNAPSHOT_SUFFIX = re.compile(r"^-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ModelPrice:
    """One model's token prices and image-token rule, with provenance."""

    model: str
    input_per_mtok: float
    cached_input_per_mtok: float
    output_per_mtok: float
    batch_discount: float  # e.g. 0.5 = Batch costs 50% of standard
    image_rule: str  # "tile" | "patch"
    patch_multiplier: float | None  # patch-based models only
    source: str
    date: str
    tile_base_tokens: int | None = None  # tile models: low-detail cost and high-detail base
    tile_tokens: int | None = None  # tile models: tokens per 512 px tile
    batch_cached_input_per_mtok: float | None = None  # None: no cached price listed on Batch
    image_source: str = ""
    looked_up: str = ""
    verified: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        if self.image_rule not in IMAGE_RULES:
            raise ValueError(f"{self.model}: image_rule must be one of {IMAGE_RULES}")
        if self.image_rule == "patch" and not self.patch_multiplier:
            raise ValueError(f"{self.model}: a patch model needs patch_multiplier")
        if self.image_rule == "tile" and (self.tile_base_tokens is None or not self.tile_tokens):
            raise ValueError(f"{self.model}: a tile model needs tile_base_tokens and tile_tokens")
        if not 0 < self.batch_discount <= 1:
            raise ValueError(f"{self.model}: batch_discount must be in (0, 1]")


def _read_pricing_yaml() -> dict[str, Any]:
    text = resources.files("cascade_defect.costs").joinpath(PRICING_FILE).read_text("utf-8")
    return yaml.safe_load(text)


@cache
def _pricing_table() -> dict[str, ModelPrice]:
    raw = _read_pricing_yaml()
    defaults = raw.get("defaults", {})
    table: dict[str, ModelPrice] = {}
    for name, entry in raw["models"].items():
        fields = {
            "batch_discount": defaults.get("batch_discount", 0.5),
            "looked_up": defaults.get("looked_up", ""),
        }
        fields.update(entry)
        table[name] = ModelPrice(model=name, **fields)
    return table


def load_pricing() -> dict[str, ModelPrice]:
    """All priced models, keyed by base model name (a fresh dict; the entries are frozen)."""
    return dict(_pricing_table())


def price_for(model: str) -> ModelPrice:
    """Price entry for ``model``; dated snapshots such as ``gpt-4o-2024-08-06`` map to their base.

    Matching is exact or base name + ``-YYYY-MM-DD`` so that ``gpt-4o-mini-...`` never
    falls back to ``gpt-4o`` (the longest base name wins).
    """
    table = _pricing_table()
    if model in table:
        return table[model]
    for base in sorted(table, key=len, reverse=True):
        if model.startswith(base) and _SNAPSHOT_SUFFIX.match(model[len(base) :]):
            return table[base]
    raise KeyError(f"no price for model {model!r}; known models: {', '.join(sorted(table))}")


def _tile_tokens(price: ModelPrice, width: int, height: int, detail: str) -> int:
    assert price.tile_base_tokens is not None and price.tile_tokens is not None
    if detail == "low":
        return price.tile_base_tokens
    # "auto" is treated as "high": the upper bound, since the server's choice is not documented.
    w, h = float(width), float(height)
    fit = min(1.0, TILE_FIT_BOX_PX / max(w, h))  # only ever scaled down
    w, h = w * fit, h * fit
    shrink = min(1.0, TILE_SHORT_SIDE_PX / min(w, h))  # small images are not upscaled
    w, h = w * shrink, h * shrink
    tiles = math.ceil(round(w, 6) / TILE_SIZE_PX) * math.ceil(round(h, 6) / TILE_SIZE_PX)
    return price.tile_base_tokens + price.tile_tokens * tiles


def patch_count(width: int, height: int) -> int:
    """32x32 patches covering the image, after the guide's scale-down to at most 1536."""
    patches = math.ceil(width / PATCH_SIZE_PX) * math.ceil(height / PATCH_SIZE_PX)
    if patches <= PATCH_CAP:
        return patches
    shrink = math.sqrt(PATCH_SIZE_PX**2 * PATCH_CAP / (width * height))
    w_patches = width * shrink / PATCH_SIZE_PX
    h_patches = height * shrink / PATCH_SIZE_PX
    shrink *= min(math.floor(w_patches) / w_patches, math.floor(h_patches) / h_patches)
    new_w = round(width * shrink, 6)
    new_h = round(height * shrink, 6)
    patches = math.ceil(new_w / PATCH_SIZE_PX) * math.ceil(new_h / PATCH_SIZE_PX)
    return min(patches, PATCH_CAP)


def image_tokens(model: str, width: int, height: int, detail: str = "low") -> int:
    """Input tokens billed for one image of ``width`` x ``height`` pixels.

    Patch models ignore ``detail``; their fractional product (patches x multiplier)
    is rounded up, which is an assumption: the guide does not state the rounding.
    """
    if width <= 0 or height <= 0:
        raise ValueError("image width and height must be positive")
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, not {detail!r}")
    price = price_for(model)
    if price.image_rule == "tile":
        return _tile_tokens(price, width, height, detail)
    assert price.patch_multiplier is not None
    return math.ceil(round(patch_count(width, height) * price.patch_multiplier, 6))


def input_rates(
    model: str, batch: bool = False, batch_caching: bool | None = None
) -> tuple[float, float]:
    """($/1M uncached input, $/1M cached input) for a mode.

    On Batch the cached rate is the table's Batch cached price when listed. Where none is
    listed, ``batch_caching=None`` (default) bills cached tokens at the Batch input rate;
    ``True`` assumes the standard cached discount also applies on Batch; ``False`` forces
    no caching discount on Batch for every model.
    """
    price = price_for(model)
    if not batch:
        return price.input_per_mtok, price.cached_input_per_mtok
    uncached = price.input_per_mtok * price.batch_discount
    if batch_caching is False:
        return uncached, uncached
    if price.batch_cached_input_per_mtok is not None:
        return uncached, price.batch_cached_input_per_mtok
    if batch_caching:
        return uncached, price.cached_input_per_mtok * price.batch_discount
    return uncached, uncached


def request_cost(
    model: str,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    batch: bool = False,
    batch_caching: bool | None = None,
) -> float:
    """USD for one request; ``prompt_tokens`` includes ``cached_tokens`` as in OpenAI usage."""
    if min(prompt_tokens, cached_tokens, completion_tokens) < 0:
        raise ValueError("token counts must be non-negative")
    if cached_tokens > prompt_tokens:
        raise ValueError("cached_tokens cannot exceed prompt_tokens (they are a subset)")
    price = price_for(model)
    uncached_rate, cached_rate = input_rates(model, batch=batch, batch_caching=batch_caching)
    output_rate = price.output_per_mtok * (price.batch_discount if batch else 1.0)
    dollars = (
        (prompt_tokens - cached_tokens) * uncached_rate
        + cached_tokens * cached_rate
        + completion_tokens * output_rate
    )
    return dollars / TOKENS_PER_MTOK
