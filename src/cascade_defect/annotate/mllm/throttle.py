"""Pace and spending limits of an online run: retries, rate-limit pauses, budget, concurrency.

Many requests are in flight at once, so these small thread-safe pieces decide when the next one
may go: a shared pause after a 429, a budget that reserves each request's worst case before it
is sent, and a concurrency limit that shrinks under rate limiting and grows back after.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal


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
