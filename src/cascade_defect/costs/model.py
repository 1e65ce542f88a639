"""What pseudo-labelling the pool costs, and what the alternatives cost.

Pure functions over token counts and prices: the notebook feeds in the real prompt's
token counts (counted by the annotator's tokenizer) and measured YOLO latency, and these
functions turn them into dollars. Nothing here calls an API or reads the dataset, so
every figure can be recomputed from its inputs.

Billing rules modelled (sources in ``data/pricing.yaml``):

* an image costs a fixed number of input tokens per model and detail
  (:func:`cascade_defect.pricing.image_tokens`);
* the identical prompt prefix (instructions + seed images + seed boxes) can be served from
  OpenAI's prompt cache once the prompt reaches 1,024 tokens, in 128-token increments, and
  cached tokens bill at the cached-input rate;
* the Batch API halves input and output prices; its cached-input discount is listed only
  for the gpt-5 family, so other models get no caching discount on Batch unless
  ``batch_caching=True`` is set (see :func:`cascade_defect.pricing.input_rates`).

These billing choices travel together as one :class:`BillingOptions`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from cascade_defect.costs.pricing import (
    TOKENS_PER_MTOK,
    image_tokens,
    input_rates,
    load_pricing,
    price_for,
    request_cost,
)

#: NEU-DET: 1,800 images minus 18 seed images minus the 360-image golden test set.
NEU_DET_POOL_SIZE = 1422


#: OpenAI prompt caching: no cache below this many prompt tokens ...
CACHE_MIN_TOKENS = 1024


#: ... and cache hits grow in steps of this many tokens.
CACHE_INCREMENT_TOKENS = 128


#: Share of requests whose prefix is found in the cache. An assumption, not a measurement:
#: the first request always misses and routing spreads traffic over machines; replace it
#: with the hit rate measured by :func:`cost_from_usage` once requests have been sent.
DEFAULT_CACHE_HIT_RATE = 0.9


MODES = ("standard", "batch")


class BillingOptions(BaseModel):
    """How requests are billed: the same choices price one request, a grid and a sweep.

    :func:`cost_grid`, :func:`config_search` and :func:`cost_sweep` vary ``batch`` and
    ``prompt_caching`` (and a price sweep ``price_multiplier``) themselves and take the rest
    from here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch: bool = Field(False, description="Bill at the Batch API's discounted rates.")
    prompt_caching: bool = Field(
        False,
        description="Bill the cacheable prefix at the cached-input rate for cache hits.",
    )
    cache_hit_rate: float = Field(
        DEFAULT_CACHE_HIT_RATE,
        ge=0.0,
        le=1.0,
        description="Share of requests whose prefix is served from the cache (with caching).",
    )
    batch_caching: bool | None = Field(
        None,
        description=(
            "Whether Batch requests earn the caching discount; None: only where the price "
            "list gives a Batch cached rate (see cascade_defect.pricing.input_rates)."
        ),
    )
    price_multiplier: float = Field(
        1.0, ge=0.0, description="Scales every price, for sensitivity to price changes."
    )

    @property
    def mode(self) -> str:
        """``"batch"`` or ``"standard"``, as the cost tables name it."""
        return "batch" if self.batch else "standard"

    def with_mode(self, batch: bool, prompt_caching: bool) -> BillingOptions:
        """These options in another billing mode (a :data:`ModeTuple`)."""
        return self.model_copy(update={"batch": batch, "prompt_caching": prompt_caching})


DEFAULT_BILLING = BillingOptions()


@dataclass(frozen=True)
class PromptTokens:
    """Input tokens of one request, split into the cacheable static prefix and the rest."""

    model: str
    detail: str
    prefix_tokens: int  # identical in every request: instructions, seed images, seed boxes
    varying_tokens: int  # changes per request: query image(s) and their text
    prefix_image_tokens: int
    varying_image_tokens: int
    n_prefix_images: int
    n_varying_images: int

    @property
    def input_tokens(self) -> int:
        return self.prefix_tokens + self.varying_tokens

    @property
    def cacheable_tokens(self) -> int:
        """Tokens a cache hit can serve (:func:`cacheable_prefix_tokens` of the prefix)."""
        return cacheable_prefix_tokens(self.prefix_tokens)


def cacheable_prefix_tokens(prefix_tokens: int) -> int:
    """Tokens of a shared prefix that a cache hit bills at the cached rate.

    OpenAI caches prompts of at least 1,024 tokens and reports hits in 128-token
    increments (cookbook "Prompt Caching 201"). Reading the 1,024 minimum as applying to the
    matched prefix, a 1,000-token prefix never caches and a 2,000-token prefix caches 1,920.
    """
    if prefix_tokens < 0:
        raise ValueError("prefix_tokens must be non-negative")
    if prefix_tokens < CACHE_MIN_TOKENS:
        return 0
    return (prefix_tokens // CACHE_INCREMENT_TOKENS) * CACHE_INCREMENT_TOKENS


def prompt_token_breakdown(
    model: str,
    *,
    prefix_image_sizes: Sequence[tuple[int, int]],
    varying_image_sizes: Sequence[tuple[int, int]],
    prefix_text_tokens: int,
    varying_text_tokens: int = 0,
    detail: str = "low",
) -> PromptTokens:
    """Input tokens per request from the prompt's parts.

    The prefix holds everything identical across requests (instructions, the few-shot seed
    images and their boxes) so that it can be cached; the query image and any per-query
    text vary. Text token counts come from the caller's tokenizer, including the message
    framing tokens, because they depend on the exact prompt.
    """
    if prefix_text_tokens < 0 or varying_text_tokens < 0:
        raise ValueError("text token counts must be non-negative")
    prefix_img = sum(image_tokens(model, w, h, detail) for w, h in prefix_image_sizes)
    varying_img = sum(image_tokens(model, w, h, detail) for w, h in varying_image_sizes)
    return PromptTokens(
        model=price_for(model).model,
        detail=detail,
        prefix_tokens=prefix_img + prefix_text_tokens,
        varying_tokens=varying_img + varying_text_tokens,
        prefix_image_tokens=prefix_img,
        varying_image_tokens=varying_img,
        n_prefix_images=len(prefix_image_sizes),
        n_varying_images=len(varying_image_sizes),
    )


@dataclass(frozen=True)
class PromptSpec:
    """A few-shot annotation prompt described by counts, for cost sweeps.

    ``prefix_text_tokens`` covers the instructions and the per-seed class/box text for
    ``n_seed_images`` seeds; :meth:`with_seeds` rescales the seed text by
    ``seed_text_tokens`` per seed. ``images_per_request`` > 1 packs several query images
    into one request, which amortises the prefix (the accuracy effect is not modelled). A packed
    request's own text is described by the ``packed_*`` counts when they are known (the
    annotator's packed layout, counted); otherwise each packed image repeats the single
    request's ``query_text_tokens`` and ``output_tokens_per_image``.
    """

    prefix_text_tokens: int
    output_tokens_per_image: int
    n_seed_images: int = 18
    seed_size: tuple[int, int] = (200, 200)
    query_size: tuple[int, int] = (200, 200)
    query_text_tokens: int = 0  # per query image (e.g. "Image 3:")
    images_per_request: int = 1
    detail: str = "low"
    seed_text_tokens: int = 0  # class + boxes text per seed; used by with_seeds()
    image_tokens_override: int | None = None  # sensitivity: force tokens per image
    packed_request_text_tokens: int | None = None  # a packed request's instruction, once
    packed_image_text_tokens: int = 0  # per image of a packed request (its id line)
    packed_output_tokens_per_image: int | None = None  # per image of a packed answer

    def __post_init__(self) -> None:
        if self.images_per_request < 1:
            raise ValueError("images_per_request must be >= 1")
        if self.n_seed_images < 0 or self.output_tokens_per_image < 0:
            raise ValueError("counts must be non-negative")
        if min(self.packed_request_text_tokens or 0, self.packed_image_text_tokens) < 0:
            raise ValueError("counts must be non-negative")

    @property
    def varying_text_tokens(self) -> int:
        """Text tokens of one request beyond the prefix (all its query images together)."""
        n = self.images_per_request
        if n == 1 or self.packed_request_text_tokens is None:
            return self.query_text_tokens * n
        return self.packed_request_text_tokens + n * self.packed_image_text_tokens

    def with_seeds(self, n_seed_images: int) -> PromptSpec:
        """The same prompt with a different number of seeds, each adding its box text."""
        delta = n_seed_images - self.n_seed_images
        text = self.prefix_text_tokens + delta * self.seed_text_tokens
        if text < 0:
            raise ValueError("removing seeds made the prefix text negative")
        return replace(self, n_seed_images=n_seed_images, prefix_text_tokens=text)

    def breakdown(self, model: str) -> PromptTokens:
        """Per-request tokens of this prompt for ``model``."""
        varying_text = self.varying_text_tokens
        if self.image_tokens_override is None:
            return prompt_token_breakdown(
                model,
                prefix_image_sizes=[self.seed_size] * self.n_seed_images,
                varying_image_sizes=[self.query_size] * self.images_per_request,
                prefix_text_tokens=self.prefix_text_tokens,
                varying_text_tokens=varying_text,
                detail=self.detail,
            )
        per_image = self.image_tokens_override
        return PromptTokens(
            model=price_for(model).model,
            detail=self.detail,
            prefix_tokens=per_image * self.n_seed_images + self.prefix_text_tokens,
            varying_tokens=per_image * self.images_per_request + varying_text,
            prefix_image_tokens=per_image * self.n_seed_images,
            varying_image_tokens=per_image * self.images_per_request,
            n_prefix_images=self.n_seed_images,
            n_varying_images=self.images_per_request,
        )

    def n_requests(self, n_images: int) -> int:
        return math.ceil(n_images / self.images_per_request)

    def output_tokens_per_request(self) -> int:
        per_image = self.output_tokens_per_image
        if self.images_per_request > 1 and self.packed_output_tokens_per_image is not None:
            per_image = self.packed_output_tokens_per_image
        return per_image * self.images_per_request


@dataclass(frozen=True)
class CostBreakdown:
    """Dollars and tokens for annotating a set of images in one mode."""

    model: str
    mode: str  # "standard" | "batch"
    prompt_caching: bool
    n_requests: int
    uncached_input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    uncached_input_usd: float
    cached_input_usd: float
    output_usd: float
    cache_hit_rate: float
    price_multiplier: float = 1.0

    @property
    def input_tokens(self) -> int:
        return self.uncached_input_tokens + self.cached_input_tokens

    @property
    def input_usd(self) -> float:
        return self.uncached_input_usd + self.cached_input_usd

    @property
    def total_usd(self) -> float:
        return self.input_usd + self.output_usd

    @property
    def usd_per_request(self) -> float:
        return self.total_usd / self.n_requests if self.n_requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(
            input_tokens=self.input_tokens,
            input_usd=self.input_usd,
            total_usd=self.total_usd,
            usd_per_request=self.usd_per_request,
        )
        return row


def annotation_cost(
    model: str,
    n_requests: int,
    prefix_tokens: int,
    varying_tokens: int,
    output_tokens: int,
    billing: BillingOptions = DEFAULT_BILLING,
) -> CostBreakdown:
    """Cost of ``n_requests`` identical-shape requests (tokens are per request).

    With ``billing.prompt_caching`` a share ``billing.cache_hit_rate`` of requests bills the
    cacheable part of the prefix at the cached rate (on Batch: see ``batch_caching`` in
    :func:`cascade_defect.pricing.input_rates`). ``billing.price_multiplier`` scales every
    price, for sensitivity to price changes.
    """
    if n_requests < 0 or min(prefix_tokens, varying_tokens, output_tokens) < 0:
        raise ValueError("counts must be non-negative")
    batch, prompt_caching = billing.batch, billing.prompt_caching
    cache_hit_rate, price_multiplier = billing.cache_hit_rate, billing.price_multiplier
    price = price_for(model)
    prompt = prefix_tokens + varying_tokens
    cached_per_hit = cacheable_prefix_tokens(prefix_tokens) if prompt_caching else 0
    hits = n_requests * cache_hit_rate if cached_per_hit else 0.0
    cached_total = round(hits * cached_per_hit)
    uncached_total = n_requests * prompt - cached_total
    output_total = n_requests * output_tokens

    uncached_rate, cached_rate = input_rates(
        model, batch=batch, batch_caching=billing.batch_caching
    )
    output_rate = price.output_per_mtok * (price.batch_discount if batch else 1.0)
    scale = price_multiplier / TOKENS_PER_MTOK
    return CostBreakdown(
        model=price.model,
        mode=billing.mode,
        prompt_caching=prompt_caching,
        n_requests=n_requests,
        uncached_input_tokens=uncached_total,
        cached_input_tokens=cached_total,
        output_tokens=output_total,
        uncached_input_usd=uncached_total * uncached_rate * scale,
        cached_input_usd=cached_total * cached_rate * scale,
        output_usd=output_total * output_rate * scale,
        cache_hit_rate=cache_hit_rate if prompt_caching else 0.0,
        price_multiplier=price_multiplier,
    )


def spec_cost(
    model: str,
    spec: PromptSpec,
    n_images: int,
    billing: BillingOptions = DEFAULT_BILLING,
) -> CostBreakdown:
    """:func:`annotation_cost` for annotating ``n_images`` with the prompt ``spec``."""
    tokens = spec.breakdown(model)
    return annotation_cost(
        model,
        n_requests=spec.n_requests(n_images),
        prefix_tokens=tokens.prefix_tokens,
        varying_tokens=tokens.varying_tokens,
        output_tokens=spec.output_tokens_per_request(),
        billing=billing,
    )


def _config_row(
    model: str, spec: PromptSpec, n_images: int, billing: BillingOptions
) -> dict[str, Any]:
    tokens = spec.breakdown(model)
    cost = spec_cost(model, spec, n_images, billing)
    price = price_for(model)
    return {
        **cost.as_dict(),
        "detail": spec.detail,
        "images_per_request": spec.images_per_request,
        "n_seed_images": spec.n_seed_images,
        "n_images": n_images,
        "prefix_tokens": tokens.prefix_tokens,
        "varying_tokens": tokens.varying_tokens,
        "image_tokens_per_image": tokens.varying_image_tokens // max(tokens.n_varying_images, 1),
        "usd_per_1000_images": cost.total_usd / n_images * 1000 if n_images else 0.0,
        "price_verified": price.verified,
    }


def cost_grid(
    spec: PromptSpec,
    n_images: int = NEU_DET_POOL_SIZE,
    models: Sequence[str] | None = None,
    billing: BillingOptions = DEFAULT_BILLING,
) -> pd.DataFrame:
    """Cost of annotating ``n_images`` for each model x {standard, batch} x {caching off, on}.

    ``billing`` gives the cache hit rate, Batch caching and price multiplier; the grid sets
    ``batch`` and ``prompt_caching`` itself.
    """
    models = list(models) if models is not None else list(load_pricing())
    rows = [
        _config_row(model, spec, n_images, billing.with_mode(batch, caching))
        for model in models
        for batch in (False, True)
        for caching in (False, True)
    ]
    return pd.DataFrame(rows)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _first(usage: Any, *names: str) -> Any:
    for name in names:
        value = _field(usage, name)
        if value is not None:
            return value
    return None


def _usage_counts(usage: Any) -> tuple[int, int, int]:
    """(prompt, cached, completion) from flat, Chat Completions or Responses API usage."""
    prompt = _first(usage, "prompt_tokens", "input_tokens")
    completion = _first(usage, "completion_tokens", "output_tokens")
    cached = _field(usage, "cached_tokens")
    if cached is None:
        details = _first(usage, "prompt_tokens_details", "input_tokens_details")
        cached = _field(details, "cached_tokens", 0)
    return int(prompt or 0), int(cached or 0), int(completion or 0)


def cost_from_usage(records: Iterable[Any], batch_caching: bool | None = None) -> pd.DataFrame:
    """Dollars actually spent, from recorded per-request usage.

    Each record (dict or object) has ``model``, ``usage.prompt_tokens``,
    ``usage.cached_tokens`` (or OpenAI's ``usage.prompt_tokens_details.cached_tokens``),
    ``usage.completion_tokens`` and optionally ``batch``; Responses API names
    (``input_tokens``, ``input_tokens_details``, ``output_tokens``) are read too. One row per (model, batch), with
    the measured cache hit share so the estimate's assumption can be checked.
    """
    totals: dict[tuple[str, bool], dict[str, float]] = {}
    for record in records:
        usage = _field(record, "usage")
        model = price_for(str(_field(record, "model"))).model
        batch = bool(_field(record, "batch", False))
        prompt, cached, completion = _usage_counts(usage)
        row = totals.setdefault(
            (model, batch),
            {"n_requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0}
            | {"requests_with_cache_hit": 0, "cost_usd": 0.0},
        )
        row["n_requests"] += 1
        row["prompt_tokens"] += prompt
        row["cached_tokens"] += cached
        row["completion_tokens"] += completion
        row["requests_with_cache_hit"] += cached > 0
        row["cost_usd"] += request_cost(
            model, prompt, cached, completion, batch=batch, batch_caching=batch_caching
        )
    columns = [
        "model",
        "batch",
        "n_requests",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "requests_with_cache_hit",
        "cache_hit_rate",
        "cost_usd",
    ]
    rows = [
        {
            "model": model,
            "batch": batch,
            **{k: int(v) for k, v in row.items() if k not in ("cost_usd",)},
            "cache_hit_rate": row["requests_with_cache_hit"] / row["n_requests"],
            "cost_usd": row["cost_usd"],
        }
        for (model, batch), row in sorted(totals.items())
    ]
    return pd.DataFrame(rows, columns=columns)


ModeTuple = tuple[bool, bool]  # (batch, prompt_caching)


ALL_MODES: tuple[ModeTuple, ...] = ((False, False), (False, True), (True, False), (True, True))


def config_search(
    spec: PromptSpec,
    n_images: int = NEU_DET_POOL_SIZE,
    models: Sequence[str] | None = None,
    details: Sequence[str] = ("low", "high"),
    images_per_request: Sequence[int] = (1,),
    modes: Sequence[ModeTuple] = ALL_MODES,
    billing: BillingOptions = DEFAULT_BILLING,
) -> pd.DataFrame:
    """Every configuration's cost, cheapest first (``modes`` set ``billing``'s mode)."""
    models = list(models) if models is not None else list(load_pricing())
    rows = []
    for model, detail, per_request, (batch, caching) in itertools.product(
        models, details, images_per_request, modes
    ):
        variant = replace(spec, detail=detail, images_per_request=per_request)
        rows.append(_config_row(model, variant, n_images, billing.with_mode(batch, caching)))
    table = pd.DataFrame(rows)
    # Ties (e.g. caching that earns no discount on Batch) go to the simpler configuration.
    table["_cost_key"] = table["total_usd"].round(9)
    table = table.sort_values(["_cost_key", "prompt_caching", "images_per_request"], kind="stable")
    return table.drop(columns="_cost_key").reset_index(drop=True)


def cheapest_config(
    spec: PromptSpec,
    n_images: int = NEU_DET_POOL_SIZE,
    models: Sequence[str] | None = None,
    budget_usd: float | None = None,
    details: Sequence[str] = ("low", "high"),
    images_per_request: Sequence[int] = (1,),
    modes: Sequence[ModeTuple] = ALL_MODES,
    billing: BillingOptions = DEFAULT_BILLING,
    supported: Callable[[Mapping[str, Any]], bool] | None = None,
) -> pd.Series:
    """The cheapest configuration over the given options, with ``within_budget``.

    Computed, not asserted: if nothing meets ``budget_usd`` the cheapest row is still
    returned with ``within_budget=False`` so the caller sees by how much it misses.
    ``supported`` (a row of :func:`config_search` -> bool) keeps the choice to configurations
    the annotator can run, so a recommendation is never one nobody can send.
    """
    table = config_search(spec, n_images, models, details, images_per_request, modes, billing)
    if supported is not None:
        table = table[[bool(supported(row)) for row in table.to_dict("records")]]
        if table.empty:
            raise ValueError("no configuration in the search is supported by the annotator")
    best = table.iloc[0].copy()
    best["within_budget"] = budget_usd is None or bool(best["total_usd"] <= budget_usd)
    best["budget_usd"] = budget_usd
    return best
