"""Online few-shot annotation through the official ``openai`` SDK, robust and resumable.

Design choices and why:

* Credentials come only from the environment / Azure credential chain. Notebook
  parameters pick provider, model or deployment, detail, concurrency and budget, so a
  rendered book can never contain a key.
* The SDK's own retries are off (``max_retries=0``): retry behaviour is ours, bounded
  and tested — ``Retry-After``/``retry-after-ms`` on 429, exponential backoff with
  jitter on 5xx, timeouts and connection errors.
* Refusals, invalid JSON, schema violations and truncated answers are recorded as
  failed attempts (with the raw text) and retried a bounded number of times; they are
  never stored as labels.
* Budget: before each request its worst-case cost is reserved; no request is sent
  when spent + reserved + next worst case would exceed the cap, so the cap holds
  even with many requests in flight.
* Every attempt is appended durably to the :class:`AnnotationStore` under its
  content-hash key; keys with an ``ok`` record are never sent again, so a crash or
  ``kill -9`` costs at most the requests that were in flight.
* ``images_per_request`` > 1 packs several query images into one request after the same
  static prefix (:mod:`~cascade_defect.annotate.mllm.packing`); each image keeps its own key
  and record, so answers are reused whatever the packing of a later run. The retry loop is
  :mod:`~cascade_defect.annotate.mllm.run_loop`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from openai import OpenAI
from PIL import Image

from cascade_defect.annotate.mllm.estimate import (
    PromptEstimate,
    estimate_prompt_tokens,
    estimate_request_tokens,
    request_cost_upper_bound,
)
from cascade_defect.annotate.mllm.packing import RequestPlan, plan_request
from cascade_defect.annotate.mllm.prompt import FewShotPrompt, SeedExample, build_prompt
from cascade_defect.annotate.mllm.providers import ClientConfig, make_client
from cascade_defect.annotate.mllm.requests import AttemptResult
from cascade_defect.annotate.mllm.run_loop import (
    Pack,
    RequestRun,
    RunTally,
    WorkItem,
    attempt_fields,
)
from cascade_defect.annotate.mllm.throttle import BudgetGuard, RetryPolicy
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.schema import (
    AnnotationRecord,
    Usage,
    annotation_key,
    prediction_model_for,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.costs import pricing
from cascade_defect.hashing import sha256_bytes

logger = logging.getLogger(__name__)


class RunAborted(RuntimeError):
    """A failure that affects every request (bad key, unknown deployment)."""


@dataclass(frozen=True)
class PoolImage:
    """An unlabelled pool image: an id and a file, deliberately no class."""

    image_id: str
    path: Path


@dataclass
class RunSummary(RunTally):
    """What an annotation run did (:class:`RunTally`'s counts, which count images), and how it
    packed its requests."""

    unique_images: int = 0
    estimated_request_usd: float = 0.0
    images_per_request: int = 1

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data["images_per_minute"] = round(self.images_per_minute, 2)
        return data


def client_from_options(
    options: AnnotatorOptions, environ: Mapping[str, str] | None = None
) -> tuple[OpenAI, ClientConfig]:
    """The SDK client ``options`` name (provider, model, endpoint), credentials from ``environ``;
    shared by the annotator and the proposal verifier so both reach the same deployment."""
    return make_client(
        options.annotator,
        options.model,
        base_url=options.base_url,
        api_version=options.api_version,
        timeout_s=options.timeout_s,
        environ=environ,
    )


class MLLMAnnotator:
    """Few-shot annotator over any OpenAI-compatible chat endpoint."""

    progress_label = "annotate"

    def __init__(
        self,
        client: OpenAI,
        config: ClientConfig,
        prompt: FewShotPrompt,
        store: AnnotationStore,
        options: AnnotatorOptions | None = None,
        *,
        retry: RetryPolicy | None = None,
        count_prior_spend: bool = True,
        budget_margin: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        """``client`` and ``config`` say where requests go (:meth:`from_options` builds them);
        ``options`` give the pricing model, budget, concurrency, attempts and answer settings;
        ``retry`` only the waits between attempts (its attempt count is ``options.max_attempts``).
        """
        options = options or AnnotatorOptions()
        self.options = options
        self.client = client
        self.config = config
        self.prompt = prompt
        self.store = store
        self.pricing_model = options.pricing_model or config.model
        self.priced = True
        try:
            pricing.price_for(self.pricing_model)  # fail fast on an unpriced model
        except KeyError:
            if config.provider != "compatible":
                raise
            # A local server (vLLM, Ollama) costs nothing per token; no budget applies.
            logger.warning("no price for %r: recording cost as $0", self.pricing_model)
            self.priced = False
        self.concurrency = options.concurrency
        self.images_per_request = options.images_per_request
        self.budget_usd = options.budget_usd
        self.count_prior_spend = count_prior_spend
        self.retry = replace(retry or RetryPolicy(), max_attempts=options.max_attempts)
        self.max_completion_tokens = options.max_completion_tokens
        self.temperature = options.temperature
        self.budget_margin = budget_margin
        self.progress = options.progress
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.response_model = prediction_model_for(prompt.class_names)
        self._reservations: dict[Any, float] = {}
        self.request_params: dict[str, Any] = {"max_completion_tokens": self.max_completion_tokens}
        if self.temperature is not None:
            self.request_params["temperature"] = self.temperature
        # Everything that changes the answer goes into the key; budget/concurrency do not.
        self.key_params: dict[str, Any] = {
            "detail": prompt.detail,
            "response_schema": sha256_bytes(
                json.dumps(self.response_model.model_json_schema(), sort_keys=True).encode()
            )[:16],
            **self.request_params,
        }

    @classmethod
    def from_options(
        cls,
        seeds: Sequence[SeedExample],
        class_names: Sequence[str],
        store_path: str | os.PathLike[str],
        options: AnnotatorOptions,
        *,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> MLLMAnnotator:
        """The client, prompt and store ``options`` describe (credentials from ``environ``).

        Raises :class:`ProviderNotConfigured` when ``annotator="auto"`` finds no credentials,
        so the caller can fall back to the offline annotator.
        """
        if options.annotator == "offline":
            raise ValueError("the offline annotator is not an MLLM: use OfflineAnnotator")
        client, config = client_from_options(options, environ)
        prompt = build_prompt(seeds, class_names, detail=options.detail)
        return cls(client, config, prompt, AnnotationStore(store_path), options, **kwargs)

    # -- keys and estimates --------------------------------------------------------------

    def key_for(self, image_bytes: bytes) -> str:
        return annotation_key(
            self.config.model, self.prompt.prompt_hash, image_bytes, self.key_params
        )

    def estimate_for(self, image_bytes: bytes) -> PromptEstimate:
        """Input tokens of the real request for this image."""
        return estimate_prompt_tokens(
            self.prompt.messages_for(image_bytes),
            self.pricing_model,
            n_static_messages=len(self.prompt.static_messages),
        )

    def reservation_for(self, image_bytes: bytes) -> float:
        """Worst-case dollars of one request for this image (cached per image size)."""
        if not self.priced:
            return 0.0
        with Image.open(io.BytesIO(image_bytes)) as img:
            size = img.size
        if size not in self._reservations:
            estimate = self.estimate_for(image_bytes)
            self._reservations[size] = request_cost_upper_bound(
                estimate, self.max_completion_tokens, self.pricing_model, self.budget_margin
            )
            logger.info(
                "%dx%d query image: ~%d prompt tokens, worst case $%.5f per request",
                *size,
                estimate.prompt_tokens,
                self._reservations[size],
            )
        return self._reservations[size]

    def reservation_for_pack(self, images: Sequence[bytes]) -> float:
        """Worst-case dollars of one request for ``images`` (:meth:`reservation_for` unless
        packing): the real packed request with the answer cap times the number of images."""
        if self.images_per_request == 1:
            (image,) = images
            return self.reservation_for(image)
        if not self.priced:
            return 0.0
        sizes = []
        for data in images:
            with Image.open(io.BytesIO(data)) as img:
                sizes.append(img.size)
        cache_key = tuple(sorted(sizes))
        if cache_key not in self._reservations:
            estimate = estimate_request_tokens(self.prompt, images, self.pricing_model, packed=True)
            self._reservations[cache_key] = request_cost_upper_bound(
                estimate,
                self.max_completion_tokens * len(images),
                self.pricing_model,
                self.budget_margin,
            )
        return self._reservations[cache_key]

    def reservation_for_items(self, items: Sequence[WorkItem]) -> float:
        """Worst-case dollars of one request for ``items`` (the run loop's question)."""
        return self.reservation_for_pack([item.image_bytes for item in items])

    def request_params_for(self, items: Sequence[WorkItem]) -> dict[str, Any]:
        """Request parameters of a request for ``items``: the answer cap is per image, so a
        packed request may use it once per image."""
        if len(items) == 1:
            return self.request_params
        cap = self.max_completion_tokens * len(items)
        return {**self.request_params, "max_completion_tokens": cap}

    def plan_for(self, items: Sequence[WorkItem], *, json_mode: bool = False) -> RequestPlan:
        """The request for ``items``: the single-image request at ``images_per_request=1``,
        the packed one otherwise (:func:`~cascade_defect.annotate.mllm.packing.plan_request`)."""
        return plan_request(
            self.prompt,
            self.response_model,
            [(item.key, item.image_bytes) for item in items],
            packed=self.images_per_request > 1,
            json_mode=json_mode,
        )

    def record_for(
        self, item: WorkItem, attempt: int, result: AttemptResult | None, **kw: Any
    ) -> AnnotationRecord:
        """The store's line for one attempt at ``item`` (``kw``: failure_kind, error,
        cost_usd, latency_s)."""
        prediction = result.prediction if result else None
        return AnnotationRecord(
            key=item.key,
            image_id=item.image_id,
            image_sha256=sha256_bytes(item.image_bytes),
            annotator=self.config.provider,
            model=self.config.model,
            prompt_hash=self.prompt.prompt_hash,
            params=self.key_params,
            status="ok" if prediction is not None else "failed",
            prediction=prediction,
            failure_kind=None if prediction is not None else kw.get("failure_kind"),
            **attempt_fields(result, attempt, **kw),
        )

    # -- run -----------------------------------------------------------------------------

    def annotate(self, pool: Sequence[PoolImage]) -> RunSummary:
        """Annotate every pool image not already answered; returns counts and cost."""
        started = time.monotonic()
        summary = RunSummary(
            requested=len(pool),
            budget_usd=self.budget_usd,
            images_per_request=self.images_per_request,
        )
        answered = self.store.answered_keys()
        items: list[WorkItem] = []
        seen: set[str] = set()
        for image in pool:
            data = Path(image.path).read_bytes()
            key = self.key_for(data)
            summary.keys_by_image[image.image_id] = key
            if key in seen:
                continue
            seen.add(key)
            if key in answered:
                summary.skipped_cached += 1
                continue
            reservation = self.reservation_for(data) if self.images_per_request == 1 else 0.0
            items.append(WorkItem(image.image_id, data, key, reservation))
        summary.unique_images = len(seen)
        if not items:
            summary.elapsed_s = time.monotonic() - started
            logger.info("nothing to send: %d image(s) already answered", summary.skipped_cached)
            return summary

        size = self.images_per_request
        packs: list[Pack[WorkItem]] = []
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            reservation = self.reservation_for_pack([item.image_bytes for item in chunk])
            packs.append(Pack(chunk, reservation))
        summary.estimated_request_usd = max(pack.reservation_usd for pack in packs)
        prior = 0.0
        if self.count_prior_spend:
            prior = sum(
                r.cost_usd
                for r in self.store.records()
                if r.prompt_hash == self.prompt.prompt_hash and r.model == self.config.model
            )
        run = RequestRun(self, summary, BudgetGuard(self.budget_usd, prior), prior)
        logger.info(
            "annotating %d image(s) in %d request(s) with %s (%s), concurrency %d, budget %s",
            len(items),
            math.ceil(len(items) / size),
            self.config.model,
            self.config.provider,
            self.concurrency,
            "none" if self.budget_usd is None else f"${self.budget_usd:.2f}",
        )
        run.execute(packs)
        summary.elapsed_s = time.monotonic() - started
        logger.info("annotation run finished: %s", summary.as_dict())
        return summary

    def request_cost(self, usage: Usage) -> float:
        """Dollars billed for one answered request (cached tokens at the cached rate)."""
        if not self.priced:
            return 0.0
        return pricing.request_cost(
            self.pricing_model,
            usage.prompt_tokens,
            min(usage.cached_tokens, usage.prompt_tokens),
            usage.completion_tokens,
        )

    def _backoff(self, failure_number: int) -> float:
        with self._rng_lock:
            return self.retry.backoff(failure_number, self._rng)


def annotate_pool(
    pool: Sequence[PoolImage],
    seeds: Sequence[SeedExample],
    class_names: Sequence[str],
    store_path: str | os.PathLike[str],
    options: AnnotatorOptions | None = None,
) -> RunSummary:
    """Pseudo-label ``pool`` with a few-shot MLLM as ``options`` say; resumable through
    ``store_path`` (see :meth:`MLLMAnnotator.from_options`)."""
    annotator = MLLMAnnotator.from_options(
        seeds, class_names, store_path, options or AnnotatorOptions()
    )
    return annotator.annotate(pool)
