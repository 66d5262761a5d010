"""Tenants' limits, counted with a clock passed in, and when a turned-away call may return.

Pure: every call takes `now` (the router's monotonic seconds).

- `rpm`: requests admitted in the last 60 s (a sliding window of admissions: exact);
  a request over it is turned away until the oldest of the window ages out.
- `tpm`: tokens (prompt + completion, from the answers' usage) in the last 60 s. Usage is
  known only when an answer returns, so the check is whether the window is already at
  the limit: requests in flight may carry it over by what they use.
- `max_concurrent`: calls of the tenant started and not yet answered; at the limit its
  next call waits in line (it is not turned away).
- A queue that is full sends the caller back after the time that queue takes to drain
  at the rate it has been draining.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from router.admission.tenants import Tenant, TenantLimits
from services.errors import ErrorCode, InferbusError, Reason
from services.wire import JobResponse

__all__ = [
    "WINDOW_S",
    "DrainRate",
    "Refusal",
    "SlidingWindow",
    "TenantUsage",
    "check_arrival",
    "queue_refusal",
    "queue_retry_after_ms",
]

WINDOW_S = 60.0
MIN_RETRY_MS = 100
MAX_RETRY_MS = 3_600_000


@dataclass(frozen=True)
class Refusal:
    """Why a call is turned away (`limit`: rpm, tpm, max_queued, queue) and when to return."""

    limit: str
    retry_after_ms: int
    message: str

    def answer(self, job_id: str) -> JobResponse:
        """The 429 answer: BUSY, the limit named first in the message, Retry-After."""
        reason = Reason.RATE_LIMITED if self.limit in ("rpm", "tpm") else None
        error = InferbusError(
            ErrorCode.BUSY,
            f"{self.limit}: {self.message}",
            retry_after_ms=self.retry_after_ms,
            reason=reason,
        )
        return JobResponse.failure(job_id, error)


class SlidingWindow:
    """Amounts added over the last `window_s` seconds; old ones age out as time passes."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, float]] = deque()
        self._total = 0.0

    def add(self, now: float, amount: float = 1.0) -> None:
        self._expire(now)
        self._events.append((now, amount))
        self._total += amount

    def total(self, now: float) -> float:
        self._expire(now)
        return self._total

    def seconds_until_at_most(self, now: float, ceiling: float) -> float:
        """How long until the window holds at most `ceiling` (0: it does now)."""
        self._expire(now)
        excess = self._total - ceiling
        if excess <= 0:
            return 0.0
        for at, amount in self._events:
            excess -= amount
            if excess <= 0:
                return max(0.0, at + self.window_s - now)
        return self.window_s

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0][0] <= horizon:
            self._total -= self._events.popleft()[1]
        if not self._events:
            self._total = 0.0


@dataclass
class TenantUsage:
    """What one tenant holds and has used lately, in this router."""

    requests: SlidingWindow = field(default_factory=SlidingWindow)
    tokens: SlidingWindow = field(default_factory=SlidingWindow)
    running: int = 0  # started, not answered

    def may_start(self, limits: TenantLimits, elsewhere: int = 0) -> bool:
        """Whether one more call may start; `elsewhere`: the tenant's calls other routers
        run (shared limits)."""
        return limits.max_concurrent is None or self.running + elsewhere < limits.max_concurrent


def check_arrival(
    tenant: str, limits: TenantLimits, usage: TenantUsage, now: float
) -> Refusal | None:
    """Whether a new call of the tenant is over its rpm or tpm (None: it may go on)."""
    if limits.rpm is not None and usage.requests.total(now) + 1 > limits.rpm:
        wait_s = usage.requests.seconds_until_at_most(now, limits.rpm - 1)
        return Refusal(
            "rpm",
            _retry_ms(wait_s),
            f"tenant {tenant!r} is at its rpm limit ({limits.rpm} requests per minute)",
        )
    if limits.tpm is not None and usage.tokens.total(now) >= limits.tpm:
        wait_s = usage.tokens.seconds_until_at_most(now, max(0, limits.tpm - 1))
        return Refusal(
            "tpm",
            _retry_ms(wait_s),
            f"tenant {tenant!r} is at its tpm limit ({limits.tpm} tokens per minute)",
        )
    return None


class DrainRate:
    """Starts per second over the last `keep` starts (None until two were seen)."""

    def __init__(self, keep: int = 32) -> None:
        self._starts: deque[float] = deque(maxlen=keep)

    def started(self, now: float) -> None:
        self._starts.append(now)

    def per_s(self, now: float) -> float | None:
        if len(self._starts) < 2:
            return None
        span = max(now, self._starts[-1]) - self._starts[0]
        return (len(self._starts) - 1) / span if span > 0 else None


def queue_retry_after_ms(waiting: int, drains_per_s: float | None, *, unknown_ms: int) -> int:
    """When a call turned away from a full queue may come back: the time that queue takes
    to drain what waits in it now; `unknown_ms` while it has not drained yet."""
    if drains_per_s is None or drains_per_s <= 0:
        return max(MIN_RETRY_MS, unknown_ms)
    return _retry_ms(max(1, waiting) / drains_per_s)


def queue_refusal(
    tenant: Tenant,
    *,
    queued: int,
    waiting: int,
    in_lane: int,
    max_queued: int,
    drains_per_s: float | None,
) -> Refusal | None:
    """Whether a call that must wait may join the line: its tenant's `max_queued` (`queued`
    of its calls wait now), the router's `max_queued` (`waiting` in all). Come back after
    the time the lane (`in_lane` waiting) takes to drain at `drains_per_s`."""
    limit = tenant.limits.max_queued
    if limit is not None and queued >= limit:
        return Refusal(
            "max_queued",
            queue_retry_after_ms(max(1, queued), drains_per_s, unknown_ms=1000),
            f"tenant {tenant.name!r} has {queued} calls waiting (max_queued {limit})",
        )
    if waiting >= max_queued:
        return Refusal(
            "queue",
            queue_retry_after_ms(in_lane + 1, drains_per_s, unknown_ms=1000),
            f"the router's queue is full ({waiting} waiting; admission.max_queued {max_queued})",
        )
    return None


def _retry_ms(seconds: float) -> int:
    """A wait of `seconds` as a Retry-After in whole ms, within the bounds we send."""
    return min(MAX_RETRY_MS, max(MIN_RETRY_MS, math.ceil(seconds * 1000)))
