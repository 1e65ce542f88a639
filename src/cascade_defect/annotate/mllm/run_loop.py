"""The retry loop of one run of chat requests: requests, 429 pauses, retries, budget and records.

One loop for every request shape and every kind of request: the annotator's (one image or a
packed list of them, :mod:`~cascade_defect.annotate.mllm.packing`) and the proposal verifier's
(one image with its numbered candidates, :mod:`~cascade_defect.annotate.mllm.verify`). The object
that decides what to send (a :class:`Requester`) plans each request and builds each record; this
loop sends it, pauses on 429s, retries failures a bounded number of times and appends one record
per item and attempt. After a partial packed answer only the items still unanswered are sent
again.

Two run-wide switches live here too: the budget stop, and the one-time fall-back to JSON mode
when a server (vLLM, Ollama) refuses ``response_format`` with a JSON schema.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import pydantic
from openai import OpenAI
from tqdm.auto import tqdm

from cascade_defect.annotate.mllm.packing import StructuredOutputMode
from cascade_defect.annotate.mllm.providers import ClientConfig
from cascade_defect.annotate.mllm.requests import (
    AttemptResult,
    _Fatal,
    _RateLimited,
    _SchemaUnsupported,
    _Sent,
    _Transient,
    post_chat,
)
from cascade_defect.annotate.mllm.throttle import (
    AdaptiveConcurrency,
    BudgetGuard,
    RateLimitGate,
    RetryPolicy,
)
from cascade_defect.annotate.schema import Usage
from cascade_defect.annotate.store import AnnotationStore
from cascade_defect.progress import progress_disabled

logger = logging.getLogger(__name__)


class RunItem(Protocol):
    """What the loop reads of an item: its image id (for logs) and its content-hash key."""

    @property
    def image_id(self) -> str: ...

    @property
    def key(self) -> str: ...


ItemT = TypeVar("ItemT", bound=RunItem)


class Plan(Protocol):
    """One request: what is sent, and how its answer becomes one result per item."""

    @property
    def json_mode(self) -> bool: ...

    @property
    def messages(self) -> list[dict[str, Any]]: ...

    @property
    def response_format(self) -> type[pydantic.BaseModel] | Mapping[str, Any]: ...

    def classify(self, completion: Mapping[str, Any]) -> list[AttemptResult]: ...


class StoredRecord(Protocol):
    """What the loop reads of a record it appends."""

    @property
    def status(self) -> str: ...

    @property
    def failure_kind(self) -> str | None: ...

    @property
    def usage(self) -> Usage: ...


class Requester(Protocol[ItemT]):
    """The object that decides what to send and how a record reads: the annotator or the
    proposal verifier. The loop owns the sending, the waits, the retries and the budget."""

    client: OpenAI
    config: ClientConfig
    retry: RetryPolicy
    concurrency: int
    progress: bool
    progress_label: str
    store: AnnotationStore
    _sleep: Callable[[float], None]

    def plan_for(self, items: Sequence[ItemT], *, json_mode: bool = False) -> Plan: ...

    def request_params_for(self, items: Sequence[ItemT]) -> dict[str, Any]: ...

    def reservation_for_items(self, items: Sequence[ItemT]) -> float: ...

    def request_cost(self, usage: Usage) -> float: ...

    def record_for(
        self, item: ItemT, attempt: int, result: AttemptResult | None, **kw: Any
    ) -> StoredRecord: ...

    def _backoff(self, failure_number: int) -> float: ...


def attempt_fields(result: AttemptResult | None, attempt: int, **kw: Any) -> dict[str, Any]:
    """The fields every stored attempt carries, whatever its record type: the answer's raw text,
    the error, tokens, cost, latency and the attempt number (``kw`` as the loop passes them)."""
    return {
        "raw_text": result.raw_text if result else None,
        "error": kw.get("error"),
        "usage": result.usage if result else Usage(),
        "cost_usd": kw.get("cost_usd", 0.0),
        "latency_s": kw.get("latency_s", 0.0),
        "attempt": attempt,
    }


@dataclass
class RunTally:
    """What a run did, counted alike for every kind of request: ``ok``, ``failed`` and
    ``not_sent`` count items, ``failed_attempts_by_kind`` attempts; tokens and cost cover the
    requests this run sent.

    ``structured_output_mode`` says how answers were constrained: ``json_schema`` (structured
    outputs) or ``json_object_fallback`` (the server refused the schema, so the run switched
    once to JSON mode with the schema in the instructions).
    """

    requested: int = 0
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
    structured_output_mode: StructuredOutputMode = "json_schema"
    keys_by_image: dict[str, str] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("keys_by_image")
        return data


@dataclass
class WorkItem:
    """One pool image to annotate: its id, bytes and annotation key."""

    image_id: str
    image_bytes: bytes
    key: str
    reservation_usd: float = 0.0


@dataclass
class Pack(Generic[ItemT]):
    """The items one request carries (one unless packing) and its worst-case cost."""

    items: list[ItemT]
    reservation_usd: float
    finished: int = 0  # items already counted in the summary


class RequestRun(Generic[ItemT]):
    """State of one run (an ``annotate`` or a ``verify`` call) shared by the worker threads."""

    def __init__(
        self,
        requester: Requester[ItemT],
        summary: RunTally,
        budget: BudgetGuard,
        prior_spend: float,
    ) -> None:
        self.a = requester
        self.summary = summary
        self.budget = budget
        self.prior_spend = prior_spend
        self.gate = RateLimitGate(requester._sleep)
        self.limiter = AdaptiveConcurrency(requester.concurrency)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failure_kinds: Counter[str] = Counter()
        self.bar: Any = None

    def execute(self, packs: list[Pack[ItemT]]) -> None:
        self.bar = tqdm(
            total=sum(len(pack.items) for pack in packs),
            desc=self.a.progress_label,
            unit="img",
            disable=progress_disabled(self.a.progress),
        )
        try:
            with ThreadPoolExecutor(max_workers=self.a.concurrency) as pool:
                for future in [pool.submit(self._run_pack, pack) for pack in packs]:
                    future.result()
        finally:
            self.bar.close()
            self.summary.failed_attempts_by_kind = dict(self.failure_kinds)
            self.summary.cost_usd = self.budget.spent_usd - self.prior_spend

    # -- bookkeeping ---------------------------------------------------------------------

    def _record(self, item: ItemT, attempt: int, result: AttemptResult | None, **kw: Any) -> None:
        record = self.a.record_for(item, attempt, result, **kw)
        self.a.store.append(record)  # type: ignore[arg-type]
        with self.lock:
            self.summary.prompt_tokens += record.usage.prompt_tokens
            self.summary.cached_tokens += record.usage.cached_tokens
            self.summary.completion_tokens += record.usage.completion_tokens
            if record.status == "failed":
                self.failure_kinds[str(record.failure_kind)] += 1

    def _finish(self, outcome: Literal["ok", "failed", "not_sent"], pack: Pack[ItemT]) -> None:
        with self.lock:
            pack.finished += 1
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

    @property
    def json_mode(self) -> bool:
        return self.summary.structured_output_mode == "json_object_fallback"

    def _fall_back_to_json_mode(self, plan: Plan, error: Exception) -> bool:
        """Switch the run to JSON mode once, when the server refused the JSON schema; true when
        ``plan`` should be sent again (it went out before the switch)."""
        if plan.json_mode:
            return False  # JSON mode refused too: a real client error
        with self.lock:
            if not self.json_mode:
                self.summary.structured_output_mode = "json_object_fallback"
                logger.warning("server refused structured outputs (%s): using JSON mode", error)
        return True

    # -- one request's images ------------------------------------------------------------

    def _run_pack(self, pack: Pack[ItemT]) -> None:
        try:
            self._run_pack_unsafe(pack)
        except Exception:
            logger.exception("unexpected error on %s", [item.image_id for item in pack.items])
            for _ in range(len(pack.items) - pack.finished):
                self._finish("failed", pack)
            raise

    def _send_once(self, plan: Plan, items: Sequence[ItemT], reservation_usd: float) -> _Sent:
        """One request under a concurrency slot and a budget reservation."""
        a = self.a
        self.limiter.acquire()
        signal: Literal["success", "rate_limited", "neutral"] = "neutral"
        try:
            if not self.budget.try_reserve(reservation_usd):
                self._stop_for_budget(reservation_usd)
                return _Sent(None, None, 0.0, reserved=False)
            with self.lock:
                self.summary.http_requests += 1
            started = time.monotonic()
            try:
                completion = post_chat(
                    a.client,
                    model=a.config.model,
                    messages=plan.messages,
                    response_format=plan.response_format,
                    request_params=a.request_params_for(items),
                )
            except (_RateLimited, _Transient, _Fatal) as exc:
                self.budget.release(reservation_usd)
                signal = "rate_limited" if isinstance(exc, _RateLimited) else "neutral"
                return _Sent(None, exc, time.monotonic() - started)
            signal = "success"
            return _Sent(plan.classify(completion), None, time.monotonic() - started)
        finally:
            self.limiter.release(signal)

    def _run_pack_unsafe(self, pack: Pack[ItemT]) -> None:
        """Send ``pack``'s items until each is answered or out of attempts.

        One request carries every image still pending; a whole-request failure costs each of
        them an attempt, and after a partial answer only the unanswered images are sent again
        (a single-image pack is exactly the pre-packing loop).
        """
        a = self.a
        pending = list(pack.items)
        attempts = dict.fromkeys((item.key for item in pending), 0)
        rate_limit_waits = 0
        plan: Plan | None = None
        reservation = pack.reservation_usd
        while pending:
            if self.stop.is_set():
                for item in pending:
                    if self.summary.stopped_by_budget and attempts[item.key] == 0:
                        self._record(
                            item, 0, None, failure_kind="budget", error=self.summary.stop_reason
                        )
                    self._finish("not_sent" if attempts[item.key] == 0 else "failed", pack)
                return
            if plan is None or plan.json_mode != self.json_mode:
                plan = a.plan_for(pending, json_mode=self.json_mode)
            self.gate.wait()
            sent = self._send_once(plan, pending, reservation)
            if not sent.reserved:
                continue  # the stop flag is set now
            error = sent.error
            if isinstance(error, _SchemaUnsupported) and self._fall_back_to_json_mode(plan, error):
                continue  # the model never saw the request: not an attempt
            if isinstance(error, _RateLimited):
                rate_limit_waits += 1
                with self.lock:
                    self.summary.rate_limited += 1
                if rate_limit_waits > a.retry.max_rate_limit_waits:
                    for item in pending:
                        self._record(
                            item,
                            attempts[item.key] + 1,
                            None,
                            failure_kind="http_error",
                            error=f"rate limited {rate_limit_waits} times: {error}",
                        )
                        self._finish("failed", pack)
                    return
                wait = error.retry_after
                if wait is None:
                    wait = a._backoff(rate_limit_waits)
                wait = min(wait, a.retry.max_retry_after_s)
                logger.debug("429 on %s; waiting %.2fs", pending[0].image_id, wait)
                self.gate.pause_for(wait)
                continue

            for item in pending:  # a 429 is not an attempt: the model never saw the request
                attempts[item.key] += 1
            attempt = max(attempts[item.key] for item in pending)
            if isinstance(error, _Transient | _Fatal):
                for item in pending:
                    self._record(
                        item,
                        attempts[item.key],
                        None,
                        failure_kind=error.kind if isinstance(error, _Transient) else "http_error",
                        error=str(error),
                        latency_s=sent.latency_s,
                    )
                if isinstance(error, _Fatal) and error.abort_run:
                    self._abort(str(error))
                if isinstance(error, _Fatal) or attempt >= a.retry.max_attempts:
                    for _ in pending:
                        self._finish("failed", pack)
                    return
                a._sleep(a._backoff(attempt))
                continue

            results = sent.result
            assert isinstance(results, list)
            usage = Usage(
                prompt_tokens=sum(r.usage.prompt_tokens for r in results),
                cached_tokens=sum(r.usage.cached_tokens for r in results),
                completion_tokens=sum(r.usage.completion_tokens for r in results),
            )
            cost = a.request_cost(usage)
            self.budget.settle(reservation, cost)
            if cost > reservation:
                logger.warning(
                    "request cost $%.5f exceeded its reservation $%.5f", cost, reservation
                )
            still: list[ItemT] = []
            for item, result in zip(pending, results, strict=True):
                self._record(
                    item,
                    attempts[item.key],
                    result,
                    failure_kind=result.failure_kind,
                    error=result.error,
                    cost_usd=cost / len(pending),  # equal shares, like the usage
                    latency_s=sent.latency_s,
                )
                if result.prediction is not None:
                    self._finish("ok", pack)
                    continue
                logger.info(
                    "%s: %s on attempt %d", item.image_id, result.failure_kind, attempts[item.key]
                )
                if attempts[item.key] >= a.retry.max_attempts:
                    self._finish("failed", pack)
                else:
                    still.append(item)
            if still and len(still) != len(pending):  # re-send only the unanswered images
                plan = None
                reservation = a.reservation_for_items(still)
            pending = still
