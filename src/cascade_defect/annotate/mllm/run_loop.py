"""The retry loop of one annotation run: requests, 429 pauses, retries, budget and records.

Split from :mod:`~cascade_defect.annotate.mllm.annotator` (which decides what to send) so the
loop stays one piece of code for every request shape: a request carries one image or a packed
list of them (:mod:`~cascade_defect.annotate.mllm.packing`), and the same loop sends it, pauses
on 429s, retries failures a bounded number of times and appends one record per image and attempt.
After a partial packed answer only the images still unanswered are sent again.

Two run-wide switches live here too: the budget stop, and the one-time fall-back to JSON mode
when a server (vLLM, Ollama) refuses ``response_format`` with a JSON schema.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tqdm.auto import tqdm

from cascade_defect.annotate.mllm.packing import RequestPlan
from cascade_defect.annotate.mllm.requests import (
    AttemptResult,
    _Fatal,
    _RateLimited,
    _SchemaUnsupported,
    _Sent,
    _Transient,
    post_chat,
)
from cascade_defect.annotate.mllm.throttle import AdaptiveConcurrency, BudgetGuard, RateLimitGate
from cascade_defect.annotate.schema import AnnotationRecord, Usage
from cascade_defect.hashing import sha256_bytes
from cascade_defect.progress import progress_disabled

if TYPE_CHECKING:
    from cascade_defect.annotate.mllm.annotator import MLLMAnnotator, RunSummary

logger = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """One pool image to send: its id, bytes and annotation key."""

    image_id: str
    image_bytes: bytes
    key: str
    reservation_usd: float = 0.0


@dataclass
class Pack:
    """The images one request carries (one unless packing) and its worst-case cost."""

    items: list[WorkItem]
    reservation_usd: float
    finished: int = 0  # images already counted in the summary


class AnnotationRun:
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

    def execute(self, packs: list[Pack]) -> None:
        self.bar = tqdm(
            total=sum(len(pack.items) for pack in packs),
            desc="annotate",
            unit="img",
            disable=progress_disabled(self.a.progress),
        )
        try:
            with ThreadPoolExecutor(max_workers=self.a.concurrency) as pool:
                for future in [pool.submit(self._annotate_pack, pack) for pack in packs]:
                    future.result()
        finally:
            self.bar.close()
            self.summary.failed_attempts_by_kind = dict(self.failure_kinds)
            self.summary.cost_usd = self.budget.spent_usd - self.prior_spend

    # -- bookkeeping ---------------------------------------------------------------------

    def _record(
        self, item: WorkItem, attempt: int, result: AttemptResult | None, **kw: Any
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

    def _finish(self, outcome: Literal["ok", "failed", "not_sent"], pack: Pack) -> None:
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

    def _fall_back_to_json_mode(self, plan: RequestPlan, error: Exception) -> bool:
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

    def _annotate_pack(self, pack: Pack) -> None:
        try:
            self._annotate_pack_unsafe(pack)
        except Exception:
            logger.exception("unexpected error on %s", [item.image_id for item in pack.items])
            for _ in range(len(pack.items) - pack.finished):
                self._finish("failed", pack)
            raise

    def _send_once(self, plan: RequestPlan, reservation_usd: float) -> _Sent:
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
                    request_params=a.request_params_for(len(plan.keys)),
                )
            except (_RateLimited, _Transient, _Fatal) as exc:
                self.budget.release(reservation_usd)
                signal = "rate_limited" if isinstance(exc, _RateLimited) else "neutral"
                return _Sent(None, exc, time.monotonic() - started)
            signal = "success"
            return _Sent(plan.classify(completion), None, time.monotonic() - started)
        finally:
            self.limiter.release(signal)

    def _annotate_pack_unsafe(self, pack: Pack) -> None:
        """Send ``pack``'s images until each is answered or out of attempts.

        One request carries every image still pending; a whole-request failure costs each of
        them an attempt, and after a partial answer only the unanswered images are sent again
        (a single-image pack is exactly the pre-packing loop).
        """
        a = self.a
        pending = list(pack.items)
        attempts = dict.fromkeys((item.key for item in pending), 0)
        rate_limit_waits = 0
        plan: RequestPlan | None = None
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
            sent = self._send_once(plan, reservation)
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
            still: list[WorkItem] = []
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
                reservation = a.reservation_for_pack([item.image_bytes for item in still])
            pending = still
