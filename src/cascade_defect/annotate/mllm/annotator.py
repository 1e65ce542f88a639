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
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from openai import OpenAI
from PIL import Image
from tqdm.auto import tqdm

from cascade_defect.annotate.mllm.estimate import (
    PromptEstimate,
    estimate_prompt_tokens,
    request_cost_upper_bound,
)
from cascade_defect.annotate.mllm.prompt import FewShotPrompt, SeedExample, build_prompt
from cascade_defect.annotate.mllm.providers import ClientConfig, make_client
from cascade_defect.annotate.mllm.requests import (
    AttemptResult,
    _Fatal,
    _RateLimited,
    _Sent,
    _Transient,
    send_chat_request,
)
from cascade_defect.annotate.mllm.throttle import (
    AdaptiveConcurrency,
    BudgetGuard,
    RateLimitGate,
    RetryPolicy,
)
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
from cascade_defect.progress import progress_disabled

logger = logging.getLogger(__name__)


class RunAborted(RuntimeError):
    """A failure that affects every request (bad key, unknown deployment)."""


@dataclass(frozen=True)
class PoolImage:
    """An unlabelled pool image: an id and a file, deliberately no class."""

    image_id: str
    path: Path


@dataclass
class RunSummary:
    """What a run did; ``failed`` counts images, ``failed_attempts_by_kind`` attempts."""

    requested: int = 0
    unique_images: int = 0
    skipped_cached: int = 0
    ok: int = 0
    failed: int = 0
    not_sent: int = 0
    http_requests: int = 0
    rate_limited: int = 0
    failed_attempts_by_kind: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    budget_usd: float | None = None
    elapsed_s: float = 0.0
    stopped_by_budget: bool = False
    stop_reason: str | None = None
    estimated_request_usd: float = 0.0
    keys_by_image: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("keys_by_image")
        data["images_per_minute"] = round(self.images_per_minute, 2)
        return data


@dataclass
class _WorkItem:
    image_id: str
    image_bytes: bytes
    key: str
    reservation_usd: float = 0.0


class MLLMAnnotator:
    """Few-shot annotator over any OpenAI-compatible chat endpoint."""

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
        self._reservations: dict[tuple[int, int], float] = {}
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
        client, config = make_client(
            options.annotator,
            options.model,
            base_url=options.base_url,
            api_version=options.api_version,
            timeout_s=options.timeout_s,
            environ=environ,
        )
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

    # -- run -----------------------------------------------------------------------------

    def annotate(self, pool: Sequence[PoolImage]) -> RunSummary:
        """Annotate every pool image not already answered; returns counts and cost."""
        started = time.monotonic()
        summary = RunSummary(requested=len(pool), budget_usd=self.budget_usd)
        answered = self.store.answered_keys()
        items: list[_WorkItem] = []
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
            items.append(_WorkItem(image.image_id, data, key, self.reservation_for(data)))
        summary.unique_images = len(seen)
        if not items:
            summary.elapsed_s = time.monotonic() - started
            logger.info("nothing to send: %d image(s) already answered", summary.skipped_cached)
            return summary

        summary.estimated_request_usd = max(item.reservation_usd for item in items)
        prior = 0.0
        if self.count_prior_spend:
            prior = sum(
                r.cost_usd
                for r in self.store.records()
                if r.prompt_hash == self.prompt.prompt_hash and r.model == self.config.model
            )
        run = _Run(self, summary, BudgetGuard(self.budget_usd, prior), prior)
        logger.info(
            "annotating %d image(s) with %s (%s), concurrency %d, budget %s",
            len(items),
            self.config.model,
            self.config.provider,
            self.concurrency,
            "none" if self.budget_usd is None else f"${self.budget_usd:.2f}",
        )
        run.execute(items)
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


class _Run:
    """State of one ``annotate`` call shared by the worker threads."""

    def __init__(
        self,
        annotator: MLLMAnnotator,
        summary: RunSummary,
        budget: BudgetGuard,
        prior_spend: float,
    ) -> None:
        self.a = annotator
        self.summary = summary
        self.budget = budget
        self.prior_spend = prior_spend
        self.gate = RateLimitGate(annotator._sleep)
        self.limiter = AdaptiveConcurrency(annotator.concurrency)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failure_kinds: Counter[str] = Counter()
        self.bar: Any = None

    def execute(self, items: list[_WorkItem]) -> None:
        self.bar = tqdm(
            total=len(items),
            desc="annotate",
            unit="img",
            disable=progress_disabled(self.a.progress),
        )
        try:
            with ThreadPoolExecutor(max_workers=self.a.concurrency) as pool:
                for future in [pool.submit(self._annotate_one, item) for item in items]:
                    future.result()
        finally:
            self.bar.close()
            self.summary.failed_attempts_by_kind = dict(self.failure_kinds)
            self.summary.cost_usd = self.budget.spent_usd - self.prior_spend

    # -- bookkeeping ---------------------------------------------------------------------

    def _record(
        self, item: _WorkItem, attempt: int, result: AttemptResult | None, **kw: Any
    ) -> None:
        prediction = result.prediction if result else None
        record = AnnotationRecord(
            key=item.key,
            image_id=item.image_id,
            image_sha256=sha256_bytes(item.image_bytes),
            annotator=self.a.config.provider,
            model=self.a.config.model,
            prompt_hash=self.a.prompt.prompt_hash,
            params=self.a.key_params,
            status="ok" if prediction is not None else "failed",
            prediction=prediction,
            failure_kind=None if prediction is not None else kw.get("failure_kind"),
            raw_text=result.raw_text if result else None,
            error=kw.get("error"),
            usage=result.usage if result else Usage(),
            cost_usd=kw.get("cost_usd", 0.0),
            latency_s=kw.get("latency_s", 0.0),
            attempt=attempt,
        )
        self.a.store.append(record)
        if record.status == "failed":
            with self.lock:
                self.failure_kinds[str(record.failure_kind)] += 1

    def _finish(self, outcome: Literal["ok", "failed", "not_sent"]) -> None:
        with self.lock:
            if outcome == "ok":
                self.summary.ok += 1
            elif outcome == "failed":
                self.summary.failed += 1
            else:
                self.summary.not_sent += 1
            spent = self.budget.spent_usd - self.prior_spend
        self.bar.set_postfix_str(f"${spent:.4f}", refresh=False)
        self.bar.update(1)

    def _stop_for_budget(self, next_request: float) -> None:
        with self.lock:
            if not self.summary.stopped_by_budget:
                self.summary.stopped_by_budget = True
                self.summary.stop_reason = (
                    f"budget: spent ${self.budget.spent_usd:.4f} + in flight "
                    f"${self.budget.reserved_usd:.4f} + next request ${next_request:.4f} "
                    f"would exceed ${self.budget.budget_usd:.2f}"
                )
                logger.warning("stopping: %s", self.summary.stop_reason)
        self.stop.set()

    def _abort(self, reason: str) -> None:
        with self.lock:
            if self.summary.stop_reason is None:
                self.summary.stop_reason = reason
                logger.error("aborting run: %s", reason)
        self.stop.set()

    # -- one image -----------------------------------------------------------------------

    def _annotate_one(self, item: _WorkItem) -> None:
        try:
            self._annotate_one_unsafe(item)
        except Exception:
            logger.exception("unexpected error on %s", item.image_id)
            self._finish("failed")
            raise

    def _send_once(self, item: _WorkItem, messages: list[dict[str, Any]]) -> _Sent:
        """One request under a concurrency slot and a budget reservation."""
        a = self.a
        self.limiter.acquire()
        signal: Literal["success", "rate_limited", "neutral"] = "neutral"
        try:
            if not self.budget.try_reserve(item.reservation_usd):
                self._stop_for_budget(item.reservation_usd)
                return _Sent(None, None, 0.0, reserved=False)
            with self.lock:
                self.summary.http_requests += 1
            started = time.monotonic()
            try:
                result = send_chat_request(
                    a.client,
                    model=a.config.model,
                    messages=messages,
                    response_model=a.response_model,
                    request_params=a.request_params,
                )
            except (_RateLimited, _Transient, _Fatal) as exc:
                self.budget.release(item.reservation_usd)
                signal = "rate_limited" if isinstance(exc, _RateLimited) else "neutral"
                return _Sent(None, exc, time.monotonic() - started)
            signal = "success"
            return _Sent(result, None, time.monotonic() - started)
        finally:
            self.limiter.release(signal)

    def _annotate_one_unsafe(self, item: _WorkItem) -> None:
        a = self.a
        attempt = 0
        rate_limit_waits = 0
        messages = a.prompt.messages_for(item.image_bytes)
        while True:
            if self.stop.is_set():
                if self.summary.stopped_by_budget and attempt == 0:
                    self._record(
                        item, 0, None, failure_kind="budget", error=self.summary.stop_reason
                    )
                self._finish("not_sent" if attempt == 0 else "failed")
                return
            self.gate.wait()
            sent = self._send_once(item, messages)
            if not sent.reserved:
                continue  # the stop flag is set now
            error = sent.error
            if isinstance(error, _RateLimited):
                rate_limit_waits += 1
                with self.lock:
                    self.summary.rate_limited += 1
                if rate_limit_waits > a.retry.max_rate_limit_waits:
                    self._record(
                        item,
                        attempt + 1,
                        None,
                        failure_kind="http_error",
                        error=f"rate limited {rate_limit_waits} times: {error}",
                    )
                    self._finish("failed")
                    return
                wait = error.retry_after
                if wait is None:
                    wait = a._backoff(rate_limit_waits)
                wait = min(wait, a.retry.max_retry_after_s)
                logger.debug("429 on %s; waiting %.2fs", item.image_id, wait)
                self.gate.pause_for(wait)
                continue

            attempt += 1  # a 429 is not an attempt: the model never saw the request
            if isinstance(error, _Transient):
                self._record(
                    item,
                    attempt,
                    None,
                    failure_kind=error.kind,
                    error=str(error),
                    latency_s=sent.latency_s,
                )
                if attempt >= a.retry.max_attempts:
                    self._finish("failed")
                    return
                a._sleep(a._backoff(attempt))
                continue
            if isinstance(error, _Fatal):
                self._record(
                    item,
                    attempt,
                    None,
                    failure_kind="http_error",
                    error=str(error),
                    latency_s=sent.latency_s,
                )
                if error.abort_run:
                    self._abort(str(error))
                self._finish("failed")
                return

            result = sent.result
            assert result is not None
            cost = a.request_cost(result.usage)
            self.budget.settle(item.reservation_usd, cost)
            if cost > item.reservation_usd:
                logger.warning(
                    "request cost $%.5f exceeded its reservation $%.5f",
                    cost,
                    item.reservation_usd,
                )
            self._record(
                item,
                attempt,
                result,
                failure_kind=result.failure_kind,
                error=result.error,
                cost_usd=cost,
                latency_s=sent.latency_s,
            )
            if result.prediction is not None:
                self._finish("ok")
                return
            logger.info("%s: %s on attempt %d", item.image_id, result.failure_kind, attempt)
            if attempt >= a.retry.max_attempts:
                self._finish("failed")
                return


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
