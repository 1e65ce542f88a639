"""Checking detector proposals with the MLLM: one request per image, numbered boxes drawn on it.

The seed detector proposes candidate boxes on each pool image, and many of them are texture, not
defects. The verifier draws the candidates as numbered rectangles on the image and sends it, after
the annotation prompt's few-shot seed gallery when seeds are given, with the class list and the
image's annotated class; the model answers, for each candidate number, whether it is a defect and
of which class. Only candidates judged defects become pseudo-boxes.

Choices and why:

* The answer format is the provider's structured output (class names as an enum), and each answer
  is checked again against what was sent: every candidate number exactly once, no unknown number,
  a known class, and ``no_defect`` exactly when ``is_defect`` is false. Anything else is a
  ``schema_violation`` (invalid JSON, refusals and truncation as in the annotator), retried up to
  ``options.max_attempts`` times.
* An image whose attempts all fail keeps its candidates *unverified*: :func:`verify_proposals`
  returns them apart (``VerificationResult.unverified``) instead of keeping or dropping them,
  because whether an unchecked box beats no box depends on the caller's label source. A re-run
  sends failed images again, answered ones never.
* Requests, retries, 429 pauses, the budget and prices are the annotator's (``send_chat_request``,
  ``throttle``, ``pricing``); every attempt is appended to a JSONL store keyed by the content hash
  of the image, the candidate boxes, the model and the prompt.

The request itself (answer schema, drawing, prompt, record, cost estimate) is in
:mod:`cascade_defect.annotate.mllm.verify_request`; this module sends it and applies the answers.
"""

from __future__ import annotations

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
from typing import Any, Literal, cast

from openai import OpenAI
from tqdm.auto import tqdm

from cascade_defect.annotate.boxes import Proposal
from cascade_defect.annotate.mllm.annotator import PoolImage, client_from_options
from cascade_defect.annotate.mllm.estimate import (
    PromptEstimate,
    estimate_prompt_tokens,
    request_cost_upper_bound,
)
from cascade_defect.annotate.mllm.prompt import SeedExample
from cascade_defect.annotate.mllm.providers import ClientConfig
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
from cascade_defect.annotate.mllm.verify_request import (
    COMPLETION_TOKENS_BASE,
    COMPLETION_TOKENS_PER_CANDIDATE,
    CandidateVerdict,
    VerificationAnswer,
    VerificationPrompt,
    VerificationRecord,
    VerificationStore,
    apply_verdicts,
    build_verification_prompt,
    candidate_boxes,
    check_answer,
    draw_candidates,
    verification_model_for,
)
from cascade_defect.annotate.options import AnnotatorOptions
from cascade_defect.annotate.schema import Usage, annotation_key
from cascade_defect.costs import pricing
from cascade_defect.hashing import sha256_bytes
from cascade_defect.progress import progress_disabled

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- verifier


@dataclass
class VerificationSummary:
    """What a run did; ``failed`` counts images, ``failed_attempts_by_kind`` attempts; tokens and
    cost cover the requests this run sent."""

    requested: int = 0
    with_candidates: int = 0
    candidates: int = 0
    unique_requests: int = 0
    skipped_cached: int = 0
    ok: int = 0
    failed: int = 0
    not_sent: int = 0
    http_requests: int = 0
    rate_limited: int = 0
    failed_attempts_by_kind: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    budget_usd: float | None = None
    elapsed_s: float = 0.0
    stopped_by_budget: bool = False
    stop_reason: str | None = None
    keys_by_image: dict[str, str] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("keys_by_image")
        return data


@dataclass
class _Item:
    image_id: str
    path: Path
    proposals: list[Proposal]
    image_class: str | None
    key: str
    image_sha256: str
    params: dict[str, Any]
    reservation_usd: float


class MllmProposalVerifier:
    """Verifies proposals over any OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI)."""

    def __init__(
        self,
        client: OpenAI,
        config: ClientConfig,
        prompt: VerificationPrompt,
        store: VerificationStore,
        options: AnnotatorOptions | None = None,
        *,
        retry: RetryPolicy | None = None,
        budget_margin: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        """As :class:`MLLMAnnotator`: ``options`` give the pricing model, budget (spent by this
        store's records of the same prompt and model), concurrency, attempts and answer length."""
        self.options = options = options or AnnotatorOptions()
        self.client, self.config, self.prompt, self.store = client, config, prompt, store
        self.pricing_model = options.pricing_model or config.model
        self.priced = True
        try:
            pricing.price_for(self.pricing_model)
        except KeyError:
            if config.provider != "compatible":
                raise
            logger.warning("no price for %r: recording cost as $0", self.pricing_model)
            self.priced = False
        self.retry = replace(retry or RetryPolicy(), max_attempts=options.max_attempts)
        self.budget_margin = budget_margin
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.response_model = verification_model_for(prompt.class_names)
        self.schema_hash = sha256_bytes(
            json.dumps(self.response_model.model_json_schema(), sort_keys=True).encode()
        )[:16]

    @classmethod
    def from_options(
        cls,
        class_names: Sequence[str],
        store_path: str | os.PathLike[str],
        options: AnnotatorOptions,
        *,
        seeds: Sequence[SeedExample] = (),
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> MllmProposalVerifier:
        """The client (credentials from ``environ``), prompt and store ``options`` describe."""
        if options.annotator == "offline":
            raise ValueError("verification needs an MLLM provider, not the offline annotator")
        client, config = client_from_options(options, environ)
        prompt = build_verification_prompt(class_names, seeds, detail=options.detail)
        return cls(client, config, prompt, VerificationStore(store_path), options, **kwargs)

    # -- requests, keys and estimates ------------------------------------------------------

    def request_params(self, n_candidates: int) -> dict[str, Any]:
        """Answer settings; the length cap grows with the candidates so long lists fit."""
        need = COMPLETION_TOKENS_BASE + COMPLETION_TOKENS_PER_CANDIDATE * n_candidates
        params: dict[str, Any] = {
            "max_completion_tokens": max(self.options.max_completion_tokens, need)
        }
        if self.options.temperature is not None:
            params["temperature"] = self.options.temperature
        return params

    def key_params(self, proposals: Sequence[Proposal], image_class: str | None) -> dict[str, Any]:
        """Everything besides the model, prompt and image that changes the answer."""
        return {
            "detail": self.prompt.detail,
            "response_schema": self.schema_hash,
            "candidates": candidate_boxes(proposals),
            "image_class": image_class,
            **self.request_params(len(proposals)),
        }

    def key_for(
        self, image_bytes: bytes, proposals: Sequence[Proposal], image_class: str | None = None
    ) -> str:
        """Content-hash key: image SHA-256, candidate boxes, model, prompt and answer settings."""
        params = self.key_params(proposals, image_class)
        return annotation_key(self.config.model, self.prompt.prompt_hash, image_bytes, params)

    def estimate_for(
        self, image_bytes: bytes, proposals: Sequence[Proposal], image_class: str | None = None
    ) -> PromptEstimate:
        """Input tokens of the real request (the drawn image at its size plus all text)."""
        messages = self.prompt.messages_for(
            draw_candidates(image_bytes, proposals), proposals, image_class
        )
        return estimate_prompt_tokens(
            messages, self.pricing_model, n_static_messages=len(self.prompt.static_messages)
        )

    def request_cost(self, usage: Usage) -> float:
        """Dollars billed for one answered request (cached tokens at the cached rate)."""
        if not self.priced:
            return 0.0
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        return pricing.request_cost(
            self.pricing_model, usage.prompt_tokens, cached, usage.completion_tokens
        )

    def _backoff(self, failure_number: int) -> float:
        with self._rng_lock:
            return self.retry.backoff(failure_number, self._rng)

    # -- run -------------------------------------------------------------------------------

    def verify(
        self,
        images: Sequence[PoolImage],
        proposals: Mapping[str, Sequence[Proposal]],
        image_classes: Mapping[str, str] | None = None,
    ) -> VerificationSummary:
        """Send one request per image with candidates and no answer in the store yet."""
        started = time.monotonic()
        classes = image_classes or {}
        summary = VerificationSummary(requested=len(images), budget_usd=self.options.budget_usd)
        answered = self.store.answered_keys()
        items: list[_Item] = []
        seen: set[str] = set()
        for image in images:
            candidates = list(proposals.get(image.image_id, ()))
            if not candidates:
                continue  # nothing to verify, nothing sent
            summary.with_candidates += 1
            summary.candidates += len(candidates)
            data = Path(image.path).read_bytes()
            image_class = classes.get(image.image_id)
            key = self.key_for(data, candidates, image_class)
            summary.keys_by_image[image.image_id] = key
            if key in seen:
                continue
            seen.add(key)
            if key in answered:
                summary.skipped_cached += 1
                continue
            reservation = 0.0
            if self.priced:
                estimate = self.estimate_for(data, candidates, image_class)
                max_tokens = self.request_params(len(candidates))["max_completion_tokens"]
                reservation = request_cost_upper_bound(
                    estimate, max_tokens, self.pricing_model, self.budget_margin
                )
            items.append(
                _Item(
                    image.image_id,
                    Path(image.path),
                    candidates,
                    image_class,
                    key,
                    sha256_bytes(data),
                    self.key_params(candidates, image_class),
                    reservation,
                )
            )
        summary.unique_requests = len(seen)
        if items:
            prior = sum(
                r.cost_usd
                for r in self.store.records()
                if r.prompt_hash == self.prompt.prompt_hash and r.model == self.config.model
            )
            _VerifyRun(self, summary, BudgetGuard(self.options.budget_usd, prior)).execute(items)
        summary.elapsed_s = time.monotonic() - started
        logger.info("verification run finished: %s", summary.as_dict())
        return summary


class _VerifyRun:
    """State of one ``verify`` call shared by the worker threads (the annotator's loop rules:
    a 429 is no attempt, 5xx/timeouts and bad answers are, 401/403/404 stop the run)."""

    def __init__(
        self, verifier: MllmProposalVerifier, summary: VerificationSummary, budget: BudgetGuard
    ) -> None:
        self.v, self.summary, self.budget = verifier, summary, budget
        self.prior = budget.spent_usd
        self.gate = RateLimitGate(verifier._sleep)
        self.limiter = AdaptiveConcurrency(verifier.options.concurrency)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.kinds: Counter[str] = Counter()
        self.bar: Any = None

    def execute(self, items: list[_Item]) -> None:
        self.bar = tqdm(
            total=len(items),
            desc="verify",
            unit="img",
            disable=progress_disabled(self.v.options.progress),
        )
        try:
            with ThreadPoolExecutor(max_workers=self.v.options.concurrency) as pool:
                for future in [pool.submit(self._verify_one, item) for item in items]:
                    future.result()
        finally:
            self.bar.close()
            self.summary.failed_attempts_by_kind = dict(self.kinds)
            self.summary.cost_usd = self.budget.spent_usd - self.prior

    def _record(self, item: _Item, attempt: int, result: AttemptResult | None, **kw: Any) -> None:
        answer = cast(VerificationAnswer | None, result.prediction if result else None)
        usage = result.usage if result else Usage()
        record = VerificationRecord(
            key=item.key,
            image_id=item.image_id,
            image_sha256=item.image_sha256,
            annotator=self.v.config.provider,
            model=self.v.config.model,
            prompt_hash=self.v.prompt.prompt_hash,
            params=item.params,
            candidates=item.params["candidates"],
            image_class=item.image_class,
            status="ok" if answer is not None else "failed",
            answer=None
            if answer is None
            else VerificationAnswer.model_validate(answer.model_dump()),
            failure_kind=None if answer is not None else kw.get("failure_kind"),
            raw_text=result.raw_text if result else None,
            error=kw.get("error"),
            usage=usage,
            cost_usd=kw.get("cost_usd", 0.0),
            latency_s=kw.get("latency_s", 0.0),
            attempt=attempt,
        )
        self.v.store.append(record)  # type: ignore[arg-type]
        with self.lock:
            self.summary.prompt_tokens += usage.prompt_tokens
            self.summary.cached_tokens += usage.cached_tokens
            self.summary.completion_tokens += usage.completion_tokens
            if record.status == "failed":
                self.kinds[str(record.failure_kind)] += 1

    def _finish(self, outcome: Literal["ok", "failed", "not_sent"]) -> None:
        with self.lock:
            setattr(self.summary, outcome, getattr(self.summary, outcome) + 1)
            spent = self.budget.spent_usd - self.prior
        self.bar.set_postfix_str(f"${spent:.4f}", refresh=False)
        self.bar.update(1)

    def _stop(self, reason: str, budget: bool = False) -> None:
        with self.lock:
            if self.summary.stop_reason is None:
                self.summary.stop_reason = reason
                self.summary.stopped_by_budget = budget
                logger.warning("stopping verification: %s", reason)
        self.stop.set()

    def _send_once(self, item: _Item, messages: list[dict[str, Any]]) -> _Sent:
        """One request under a concurrency slot and a budget reservation; a well-formed JSON
        answer that does not fit the candidates sent becomes a ``schema_violation``."""
        v = self.v
        self.limiter.acquire()
        signal: Literal["success", "rate_limited", "neutral"] = "neutral"
        try:
            if not self.budget.try_reserve(item.reservation_usd):
                self._stop(
                    f"budget: spent ${self.budget.spent_usd:.4f} + in flight "
                    f"${self.budget.reserved_usd:.4f} + next ${item.reservation_usd:.4f} would "
                    f"exceed ${self.budget.budget_usd:.2f}",
                    budget=True,
                )
                return _Sent(None, None, 0.0, reserved=False)
            with self.lock:
                self.summary.http_requests += 1
            started = time.monotonic()
            try:
                result = send_chat_request(
                    v.client,
                    model=v.config.model,
                    messages=messages,
                    response_model=v.response_model,  # type: ignore[arg-type]
                    request_params=v.request_params(len(item.proposals)),
                )
            except (_RateLimited, _Transient, _Fatal) as exc:
                self.budget.release(item.reservation_usd)
                signal = "rate_limited" if isinstance(exc, _RateLimited) else "neutral"
                return _Sent(None, exc, time.monotonic() - started)
            signal = "success"
            if result.prediction is not None:
                answer = cast(VerificationAnswer, result.prediction)
                try:
                    check_answer(answer, len(item.proposals), v.prompt.class_names)
                except ValueError as exc:
                    result = AttemptResult(
                        None, "schema_violation", result.raw_text, str(exc)[:1000], result.usage
                    )
            return _Sent(result, None, time.monotonic() - started)
        finally:
            self.limiter.release(signal)

    def _verify_one(self, item: _Item) -> None:
        try:
            self._verify_one_unsafe(item)
        except Exception:
            logger.exception("unexpected error on %s", item.image_id)
            self._finish("failed")
            raise

    def _verify_one_unsafe(self, item: _Item) -> None:
        v = self.v
        drawn = draw_candidates(item.path, item.proposals)
        messages = v.prompt.messages_for(drawn, item.proposals, item.image_class)
        attempt = rate_limit_waits = 0
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
                if rate_limit_waits > v.retry.max_rate_limit_waits:
                    message = f"rate limited {rate_limit_waits} times: {error}"
                    self._record(item, attempt + 1, None, failure_kind="http_error", error=message)
                    self._finish("failed")
                    return
                wait = (
                    error.retry_after
                    if error.retry_after is not None
                    else v._backoff(rate_limit_waits)
                )
                self.gate.pause_for(min(wait, v.retry.max_retry_after_s))
                continue
            attempt += 1  # a 429 is not an attempt: the model never saw the request
            if isinstance(error, _Transient | _Fatal):
                kind = error.kind if isinstance(error, _Transient) else "http_error"
                self._record(
                    item,
                    attempt,
                    None,
                    failure_kind=kind,
                    error=str(error),
                    latency_s=sent.latency_s,
                )
                if isinstance(error, _Fatal) or attempt >= v.retry.max_attempts:
                    if isinstance(error, _Fatal) and error.abort_run:
                        self._stop(str(error))
                    self._finish("failed")
                    return
                v._sleep(v._backoff(attempt))
                continue
            result = sent.result
            assert result is not None
            cost = v.request_cost(result.usage)
            self.budget.settle(item.reservation_usd, cost)
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
            if attempt >= v.retry.max_attempts:
                self._finish("failed")
                return


# --------------------------------------------------------------------------- results


@dataclass
class VerificationResult:
    """Per image: ``verified`` holds the candidates judged defects (``[]`` when none was, or
    the image had no candidates); ``unverified`` the candidates of images without an answer
    (failed or not sent), as proposed, for the caller to keep or drop."""

    verified: dict[str, list[Proposal]]
    unverified: dict[str, list[Proposal]]
    verdicts: dict[str, list[CandidateVerdict]]
    summary: VerificationSummary

    @property
    def kept(self) -> int:
        return sum(len(boxes) for boxes in self.verified.values())

    def as_dict(self) -> dict[str, Any]:
        """The run's summary plus what verification kept."""
        return {
            **self.summary.as_dict(),
            "kept_candidates": self.kept,
            "verified_images": len(self.verdicts),
            "unverified_images": len(self.unverified),
        }


def verify_proposals(
    verifier: MllmProposalVerifier,
    images: Sequence[PoolImage],
    proposals: Mapping[str, Sequence[Proposal]],
    *,
    image_classes: Mapping[str, str] | None = None,
    class_constraints: Mapping[str, str] | None = None,
) -> VerificationResult:
    """Verify every image's candidates (cached answers are reused) and apply the verdicts.

    ``image_classes`` are shown to the model as each image's annotated class; with
    ``class_constraints`` an image keeps only candidates judged of its constrained class.
    """
    summary = verifier.verify(images, proposals, image_classes)
    latest = cast(dict[str, VerificationRecord], verifier.store.latest_by_key())
    constraints = class_constraints or {}
    verified: dict[str, list[Proposal]] = {}
    unverified: dict[str, list[Proposal]] = {}
    verdicts: dict[str, list[CandidateVerdict]] = {}
    for image in images:
        candidates = list(proposals.get(image.image_id, ()))
        record = latest.get(summary.keys_by_image.get(image.image_id, ""))
        if not candidates:
            verified[image.image_id] = []
        elif record is None or record.answer is None:
            unverified[image.image_id] = candidates
        else:
            verdicts[image.image_id] = list(record.answer.verdicts)
            constraint = constraints.get(image.image_id)
            verified[image.image_id] = apply_verdicts(candidates, record.answer, constraint)
    return VerificationResult(verified, unverified, verdicts, summary)
