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

import argparse
import email.utils
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import openai
import pydantic
from openai import OpenAI
from PIL import Image
from tqdm.auto import tqdm

from cascade_defect import pricing
from cascade_defect.annotate.estimate import (
    PromptEstimate,
    estimate_prompt_tokens,
    request_cost_upper_bound,
)
from cascade_defect.annotate.prompt import FewShotPrompt, SeedExample, build_prompt
from cascade_defect.annotate.schema import (
    AnnotationRecord,
    DefectPrediction,
    Usage,
    annotation_key,
    prediction_model_for,
    sha256_hex,
)
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.progress import progress_disabled

logger = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "openai", "azure", "compatible"]
Provider = Literal["openai", "azure", "compatible"]
DEFAULT_AZURE_API_VERSION = "2024-10-21"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
DEFAULT_MODEL = "gpt-4o"
PLACEHOLDER_API_KEY = "not-needed"  # local OpenAI-compatible servers accept any key


class ProviderNotConfigured(RuntimeError):
    """No provider can be used with this environment; the caller falls back to offline."""


class RunAborted(RuntimeError):
    """A failure that affects every request (bad key, unknown deployment)."""


# ---------------------------------------------------------------------------------------
# Provider selection and client construction
# ---------------------------------------------------------------------------------------


def detect_provider(environ: Mapping[str, str] | None = None) -> Literal["azure", "openai"] | None:
    """Provider the ``auto`` choice means in this environment, or None for offline.

    Azure wins when ``AZURE_OPENAI_ENDPOINT`` is set (its key may come from Entra ID,
    so no key variable is required); otherwise OpenAI when ``OPENAI_API_KEY`` or
    ``OPENAI_BASE_URL`` is set.
    """
    env = os.environ if environ is None else environ
    if env.get("AZURE_OPENAI_ENDPOINT"):
        return "azure"
    if env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"):
        return "openai"
    return None


@dataclass(frozen=True)
class ClientConfig:
    """Where requests go and under which names they are recorded (never a secret)."""

    provider: Provider
    model: str  # model name, or the Azure deployment name
    base_url: str
    api_version: str | None = None
    auth: str = "api_key"  # "api_key" | "entra_id" | "none"


def make_client(
    provider: ProviderChoice = "auto",
    model: str | None = None,
    *,
    base_url: str | None = None,
    api_version: str | None = None,
    timeout_s: float = 60.0,
    environ: Mapping[str, str] | None = None,
) -> tuple[OpenAI, ClientConfig]:
    """Build an SDK client from the environment; ``model`` is the deployment on Azure.

    ``base_url`` is allowed as a parameter because it is not a secret (a local vLLM or
    Ollama server); keys are read from the environment only.
    """
    env = os.environ if environ is None else environ
    chosen: str | None = provider
    if provider == "auto":
        chosen = detect_provider(env)
        if chosen is None:
            raise ProviderNotConfigured(
                "no AZURE_OPENAI_ENDPOINT, OPENAI_API_KEY or OPENAI_BASE_URL in the environment"
            )
    if chosen == "azure":
        return _make_azure_client(model, api_version, timeout_s, env)
    if chosen in ("openai", "compatible"):
        url = base_url or env.get("OPENAI_BASE_URL") or None
        key = env.get("OPENAI_API_KEY")
        if chosen == "compatible" and not url:
            raise ProviderNotConfigured("provider 'compatible' needs base_url or OPENAI_BASE_URL")
        if not key and not url:
            raise ProviderNotConfigured("OPENAI_API_KEY is not set")
        client = OpenAI(
            api_key=key or PLACEHOLDER_API_KEY,
            base_url=url,
            max_retries=0,
            timeout=timeout_s,
        )
        config = ClientConfig(
            provider="compatible" if chosen == "compatible" or (url and not key) else "openai",
            model=model or DEFAULT_MODEL,
            base_url=str(client.base_url),
            auth="api_key" if key else "none",
        )
        return client, config
    raise ValueError(f"unknown provider {provider!r}; use auto, openai, azure or compatible")


def _make_azure_client(
    deployment: str | None, api_version: str | None, timeout_s: float, env: Mapping[str, str]
) -> tuple[OpenAI, ClientConfig]:
    endpoint = env.get("AZURE_OPENAI_ENDPOINT")
    if not endpoint:
        raise ProviderNotConfigured("AZURE_OPENAI_ENDPOINT is not set")
    deployment = deployment or env.get("AZURE_OPENAI_DEPLOYMENT")
    if not deployment:
        raise ProviderNotConfigured(
            "no Azure deployment: pass model= or set AZURE_OPENAI_DEPLOYMENT"
        )
    version = api_version or env.get("OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION
    key = env.get("AZURE_OPENAI_API_KEY")
    common: dict[str, Any] = {
        "azure_endpoint": endpoint,
        "api_version": version,
        "max_retries": 0,
        "timeout": timeout_s,
    }
    # No azure_deployment on the client: the SDK routes chat calls to
    # /openai/deployments/{model}/..., while files and batches stay at /openai/....
    if key:
        client = openai.AzureOpenAI(api_key=key, **common)
        auth = "api_key"
    else:
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider

        token_provider = get_bearer_token_provider(DefaultAzureCredential(), AZURE_SCOPE)
        client = openai.AzureOpenAI(azure_ad_token_provider=token_provider, **common)
        auth = "entra_id"
    config = ClientConfig(
        provider="azure",
        model=deployment,
        base_url=str(client.base_url),
        api_version=version,
        auth=auth,
    )
    return client, config


# ---------------------------------------------------------------------------------------
# Retry policy, rate-limit gate and budget guard
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retries; 429 waits are counted separately from failed answers."""

    max_attempts: int = 3  # answers + 5xx/timeouts per image
    max_rate_limit_waits: int = 20  # 429s per image before giving up on it
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0  # never sleep longer than this on one 429

    def backoff(self, failure_number: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff: uniform in [0, base * 2**(n-1)], capped."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (failure_number - 1))
        return rng.uniform(0.5 * ceiling, ceiling)


def retry_after_seconds(headers: Mapping[str, str] | Any) -> float | None:
    """Server-requested wait from ``retry-after-ms`` or ``Retry-After`` (seconds or date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parsed = email.utils.parsedate_to_datetime(value) if value else None
    if parsed is None:
        return None
    return max(parsed.timestamp() - time.time(), 0.0)


class RateLimitGate:
    """Shared pause after a 429, so all workers back off together instead of hammering."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._resume_at = 0.0
        self._lock = threading.Lock()
        self._sleep = sleep

    def pause_for(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def wait(self) -> None:
        while True:
            with self._lock:
                remaining = self._resume_at - time.monotonic()
            if remaining <= 0:
                return
            self._sleep(remaining)


class BudgetGuard:
    """Reserve-before-send budget: spent + reserved never exceeds the cap."""

    def __init__(self, budget_usd: float | None, already_spent_usd: float = 0.0) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = already_spent_usd
        self.reserved_usd = 0.0
        self._lock = threading.Lock()

    def try_reserve(self, amount: float) -> bool:
        with self._lock:
            if (
                self.budget_usd is not None
                and self.spent_usd + self.reserved_usd + amount > self.budget_usd
            ):
                return False
            self.reserved_usd += amount
            return True

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self.reserved_usd -= reserved
            self.spent_usd += actual

    def release(self, reserved: float) -> None:
        self.settle(reserved, 0.0)


class AdaptiveConcurrency:
    """At most ``maximum`` requests in flight, fewer while the provider answers 429.

    Additive increase, multiplicative decrease (as in TCP): a 429 halves the window
    (at most once per ``cooldown_s``, so one burst of 429s counts once), each success
    widens it by ``1/window``. Without it, every worker retries together when the
    shared ``Retry-After`` pause ends and most of them get another 429.
    """

    def __init__(
        self, maximum: int, cooldown_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.maximum = maximum
        self.window = float(maximum)
        self.in_flight = 0
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._last_decrease = -float("inf")
        self._condition = threading.Condition()

    def acquire(self) -> None:
        with self._condition:
            while self.in_flight >= max(1, int(self.window)):
                self._condition.wait()
            self.in_flight += 1

    def release(self, signal: Literal["success", "rate_limited", "neutral"]) -> None:
        with self._condition:
            self.in_flight -= 1
            if signal == "rate_limited":
                now = self._clock()
                if now - self._last_decrease >= self.cooldown_s:
                    self.window = max(1.0, self.window / 2)
                    self._last_decrease = now
            elif signal == "success":
                self.window = min(float(self.maximum), self.window + 1.0 / self.window)
            self._condition.notify_all()


# ---------------------------------------------------------------------------------------
# One request and its classification
# ---------------------------------------------------------------------------------------


@dataclass
class AttemptResult:
    """Outcome of one HTTP request that reached the model (status 200)."""

    prediction: DefectPrediction | None
    failure_kind: str | None
    raw_text: str | None
    error: str | None
    usage: Usage


def _usage_from(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    if not isinstance(usage, Mapping):
        usage = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def classify_completion(
    completion: Mapping[str, Any], response_model: type[DefectPrediction]
) -> AttemptResult:
    """Turn a chat.completion JSON body into a prediction or a typed failure.

    Shared by the online client and Batch ingestion so both apply the same rules.
    """
    usage = _usage_from(completion.get("usage"))
    choices = completion.get("choices") or []
    if not choices:
        return AttemptResult(None, "invalid_json", None, "completion has no choices", usage)
    choice = choices[0]
    message = choice.get("message") or {}
    content = message.get("content")
    if message.get("refusal"):
        return AttemptResult(None, "refusal", message["refusal"], "model refused", usage)
    finish = choice.get("finish_reason")
    if finish == "length":
        return AttemptResult(None, "length", content, "answer truncated (max tokens)", usage)
    if finish == "content_filter":
        return AttemptResult(None, "content_filter", content, "content filter", usage)
    if not content:
        return AttemptResult(None, "invalid_json", content, "empty content", usage)
    try:
        json.loads(content)
    except json.JSONDecodeError as exc:
        return AttemptResult(None, "invalid_json", content, f"invalid JSON: {exc}", usage)
    try:
        prediction = response_model.model_validate_json(content)
    except pydantic.ValidationError as exc:
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return AttemptResult(None, "schema_violation", content, summary[:1000], usage)
    return AttemptResult(prediction, None, content, None, usage)


@dataclass
class _Sent:
    """What one send produced: an answer, a classified HTTP error, or no budget."""

    result: AttemptResult | None
    error: Exception | None
    latency_s: float
    reserved: bool = True


class _RateLimited(Exception):
    def __init__(self, retry_after: float | None, message: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Transient(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Fatal(Exception):
    """A client error that retrying cannot fix (400 for this image, 401/403/404 for all)."""

    def __init__(self, message: str, abort_run: bool) -> None:
        super().__init__(message)
        self.abort_run = abort_run


def _parse_method(client: OpenAI) -> Callable[..., Any]:
    """``chat.completions.with_raw_response.parse``; older SDKs keep it under ``beta``."""
    completions = client.chat.completions
    if hasattr(completions, "parse"):
        return completions.with_raw_response.parse
    return client.beta.chat.completions.with_raw_response.parse  # type: ignore[attr-defined]


def send_chat_request(
    client: OpenAI,
    *,
    model: str,
    messages: list[dict[str, Any]],
    response_model: type[DefectPrediction],
    request_params: Mapping[str, Any],
) -> AttemptResult:
    """One structured-output call via ``chat.completions.parse``; raw body kept on failure."""
    try:
        raw = _parse_method(client)(
            model=model,
            messages=messages,
            response_format=response_model,
            **request_params,
        )
    except openai.RateLimitError as exc:
        raise _RateLimited(retry_after_seconds(exc.response.headers), str(exc)) from exc
    except openai.APITimeoutError as exc:
        raise _Transient("timeout", str(exc) or "request timed out") from exc
    except openai.APIConnectionError as exc:
        raise _Transient("http_error", f"connection error: {exc}") from exc
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            raise _Transient("http_error", f"HTTP {exc.status_code}: {exc.message}") from exc
        abort = exc.status_code in (401, 403, 404)
        raise _Fatal(f"HTTP {exc.status_code}: {exc.message}", abort_run=abort) from exc
    # The body is classified from its raw JSON (not the SDK's parsed object) so that a
    # failed answer keeps its exact text and gets a precise failure kind.
    return classify_completion(raw.http_response.json(), response_model)


# ---------------------------------------------------------------------------------------
# The annotator
# ---------------------------------------------------------------------------------------


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
        *,
        pricing_model: str | None = None,
        concurrency: int = 4,
        budget_usd: float | None = None,
        count_prior_spend: bool = True,
        retry: RetryPolicy | None = None,
        max_completion_tokens: int = 400,
        temperature: float | None = 0.0,  # None for reasoning models, which reject it
        budget_margin: float = 0.1,
        progress: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.config = config
        self.prompt = prompt
        self.store = store
        self.pricing_model = pricing_model or config.model
        self.priced = True
        try:
            pricing.price_for(self.pricing_model)  # fail fast on an unpriced model
        except KeyError:
            if config.provider != "compatible":
                raise
            # A local server (vLLM, Ollama) costs nothing per token; no budget applies.
            logger.warning("no price for %r: recording cost as $0", self.pricing_model)
            self.priced = False
        self.concurrency = concurrency
        self.budget_usd = budget_usd
        self.count_prior_spend = count_prior_spend
        self.retry = retry or RetryPolicy()
        self.max_completion_tokens = max_completion_tokens
        self.temperature = temperature
        self.budget_margin = budget_margin
        self.progress = progress
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.response_model = prediction_model_for(prompt.class_names)
        self._reservations: dict[tuple[int, int], float] = {}
        self.request_params: dict[str, Any] = {"max_completion_tokens": max_completion_tokens}
        if temperature is not None:
            self.request_params["temperature"] = temperature
        # Everything that changes the answer goes into the key; budget/concurrency do not.
        self.key_params: dict[str, Any] = {
            "detail": prompt.detail,
            "response_schema": sha256_hex(
                json.dumps(self.response_model.model_json_schema(), sort_keys=True).encode()
            )[:16],
            **self.request_params,
        }

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
            image_sha256=sha256_hex(item.image_bytes),
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


# ---------------------------------------------------------------------------------------
# Entry point for notebooks and the command line
# ---------------------------------------------------------------------------------------


def annotate_pool(
    pool: Sequence[PoolImage],
    seeds: Sequence[SeedExample],
    class_names: Sequence[str],
    store_path: str | os.PathLike[str],
    *,
    provider: ProviderChoice = "auto",
    model: str | None = None,
    pricing_model: str | None = None,
    detail: str = "low",
    concurrency: int = 4,
    budget_usd: float | None = 5.0,
    max_attempts: int = 3,
    max_completion_tokens: int = 400,
    temperature: float | None = 0.0,
    base_url: str | None = None,
    api_version: str | None = None,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> RunSummary:
    """Pseudo-label ``pool`` with a few-shot MLLM; resumable through ``store_path``.

    ``model`` is the Azure deployment name on Azure; ``pricing_model`` names the
    priced model behind it when the two differ. Raises :class:`ProviderNotConfigured`
    when ``provider="auto"`` finds no credentials, so the caller can fall back to the
    offline annotator.
    """
    client, config = make_client(
        provider, model, base_url=base_url, api_version=api_version, timeout_s=timeout_s
    )
    prompt = build_prompt(seeds, class_names, detail=detail)
    annotator = MLLMAnnotator(
        client,
        config,
        prompt,
        AnnotationStore(store_path),
        pricing_model=pricing_model,
        concurrency=concurrency,
        budget_usd=budget_usd,
        retry=RetryPolicy(max_attempts=max_attempts),
        max_completion_tokens=max_completion_tokens,
        temperature=temperature,
        progress=progress,
    )
    return annotator.annotate(pool)


def load_manifest(
    path: str | os.PathLike[str],
) -> tuple[list[str], list[SeedExample], list[PoolImage]]:
    """Read a run manifest: ``{"class_names": [...], "seeds": [...], "pool": [...]}``.

    Seeds: ``{"image_id", "path", "class_name", "boxes": [[cls, x1, y1, x2, y2], ...]}``;
    pool: ``{"image_id", "path"}`` (no class, by design). Relative paths are resolved
    against the manifest's folder.
    """
    manifest_path = Path(path)
    data = json.loads(manifest_path.read_text("utf-8"))
    root = manifest_path.parent

    def resolve(p: str) -> Path:
        candidate = Path(p)
        return candidate if candidate.is_absolute() else root / candidate

    seeds = [
        SeedExample(
            image_id=s["image_id"],
            image=resolve(s["path"]),
            class_name=s["class_name"],
            boxes=tuple(tuple(b) for b in s.get("boxes", [])),
        )
        for s in data["seeds"]
    ]
    pool = [PoolImage(p["image_id"], resolve(p["path"])) for p in data["pool"]]
    return list(data["class_names"]), seeds, pool


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cascade_defect.annotate.client MANIFEST --store STORE [...]``."""
    parser = argparse.ArgumentParser(description=(main.__doc__ or "").strip())
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument(
        "--provider", default="auto", choices=["auto", "openai", "azure", "compatible"]
    )
    parser.add_argument("--model", default=None, help="model, or the Azure deployment name")
    parser.add_argument("--pricing-model", default=None)
    parser.add_argument("--detail", default="low", choices=["low", "high", "auto"])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--budget-usd", type=float, default=5.0)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    class_names, seeds, pool = load_manifest(args.manifest)
    summary = annotate_pool(
        pool,
        seeds,
        class_names,
        args.store,
        provider=args.provider,
        model=args.model,
        pricing_model=args.pricing_model,
        detail=args.detail,
        concurrency=args.concurrency,
        budget_usd=args.budget_usd,
        max_attempts=args.max_attempts,
        progress=not args.no_progress,
    )
    sys_out = json.dumps(summary.as_dict(), indent=2)
    logger.info("summary:\n%s", sys_out)
    return 0 if summary.failed == 0 and summary.not_sent == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
