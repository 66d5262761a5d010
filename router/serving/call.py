"""One call through the router: who asks, for what, until when, and where the answer goes.

A `Call` is made once, at the HTTP edge (`Calls.make`), and handed down unchanged: the
idempotency gate (`IdempotencyGate.serve`) and the dispatcher (`Router.dispatch`) take
it whole, so a new fact about a request (its priority, how long it queued) is one field
here, set where it is known and read where it matters, not a new argument on every
layer. Its budget is computed once, on arrival, into a deadline on the router's clock.

The job inside is the one parsed from the body; a layer that must send a different one
(the gate's wire job, under a fresh id and the tenant's key) hands down
`call.with_job(wire)`, a new call around the same sinks, never a copy per layer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from router.attempts.resume import StreamSoFar
from router.attempts.route import Route
from router.selection.select import Selection
from services.deadlines import remaining_budget_ms
from services.token_times import TokenTimes
from services.wire import JobRequest, JobResponse, ModelSink, PieceSink

__all__ = [
    "Call",
    "CallProgress",
    "Calls",
    "ModelSink",
    "PieceSink",
    "Served",
    "TraceContext",
    "trace_context",
]

# What serving a call gives back: the answer and how it was served.
Served = tuple[JobResponse, Route]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The caller's W3C trace context (`traceparent`, `tracestate`), kept as sent."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def parent_id(self) -> str:
        return self.traceparent[36:52]


def trace_context(traceparent: str | None, tracestate: str | None) -> TraceContext | None:
    """The trace context of a request's headers, or None when there is no valid one.

    W3C Trace Context: `version-traceid-parentid-flags`, lowercase hex; version `ff`,
    an all-zero trace or parent id are invalid. A future version may append fields
    (after a `-`); version 00 may not. An invalid `traceparent` voids `tracestate` too.
    """
    if not traceparent:
        return None
    value = traceparent.strip()
    matched = _TRACEPARENT.fullmatch(value)
    if matched is None:
        return None
    version, trace_id, parent_id, _flags, more = matched.groups()
    if version == "ff" or (version == "00" and more is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    state = tracestate.strip() if tracestate else ""
    return TraceContext(value, state or None)


@dataclass(slots=True)
class CallProgress:
    """What happens to a call on its way, noted where it happens and read when it is
    answered (metrics, the live page, its span): shared by every form of the call."""

    pieces: TokenTimes | None = None  # streams: when the pieces came (first, gaps)
    queue_ms: float | None = None  # time spent waiting in the router's admission queue


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One request on its way through the router (made by `Calls.make` at the edge).

    Attributes:
        job: what is asked, as parsed from the body (the gate hands the dispatcher its
            wire job instead: `with_job`).
        tenant: the idempotency scope of the caller (router/admission/tenants.py).
        agent_id: the agent the caller speaks for, which selection may route by.
        deadline: when the answer is due, on the router's monotonic clock.
        trace: the caller's W3C trace context, if it sent one.
        on_piece: with a stream, where each piece goes as it is produced (text, or
            tool-call deltas); None for a whole answer.
        on_model: hears the model of each target before its first piece.
        tenant_name: the tenant asking, whose limits and fair share the line applies.
        priority: the class it waits in (router/admission/tenants.py `effective_class`);
            "" for its tenant's own.
        priority_note: why that class, when the request asked for another.
        queue_ms: how long it waited in the router's line (set by the line).
        gone: returns when the client has gone away (the line stops waiting for it).
        on_wait: called every `admission.keepalive_ms` while it waits (a stream's
            keep-alive).
        on_queued: hears how long it waited, when it leaves the line to run.
        progress: what happened to it on the way (shared by `with_job` and
            `streamed_to` copies).
        resume: False when the caller wants a broken stream's error rather than the
            stream resumed on another node (`x-inferbus-resume: off`).
        so_far: a stream's record of what its client already has, kept across the
            dispatcher's passes (a resumed stream sent back to the line keeps it).
        pick: the fleet node and model selection picked when the line found the call's
            lane, handed on when the call did not wait (the dispatcher's first attempt
            goes there instead of selecting again); None otherwise.
    """

    job: JobRequest
    tenant: str
    agent_id: str | None = None
    deadline: float
    trace: TraceContext | None = None
    on_piece: PieceSink | None = None
    on_model: ModelSink | None = None
    tenant_name: str = "anonymous"
    priority: str = ""
    priority_note: str = ""
    queue_ms: float = 0.0
    gone: Callable[[], Awaitable[None]] | None = None
    on_wait: Callable[[], Awaitable[None]] | None = None
    on_queued: Callable[[float], None] | None = None
    progress: CallProgress = field(default_factory=CallProgress)
    resume: bool = True
    so_far: StreamSoFar | None = None
    pick: Selection | None = None

    def with_job(self, job: JobRequest) -> Call:
        """The same call for another job (the gate's wire job)."""
        return replace(self, job=job)

    def streamed_to(self, on_piece: PieceSink, on_model: ModelSink | None) -> Call:
        """The same call answered as a stream into these sinks."""
        return replace(self, on_piece=on_piece, on_model=on_model, so_far=StreamSoFar())

    def waiting_with(self, on_wait: Callable[[], Awaitable[None]]) -> Call:
        """The same call, kept alive by `on_wait` while it waits in line."""
        return replace(self, on_wait=on_wait)

    def left_s(self, now: float) -> float:
        """Seconds left until the deadline (negative once passed)."""
        return self.deadline - now


@dataclass(frozen=True, slots=True)
class Calls:
    """Makes calls: the budget of each job computed once, on the router's clock.

    `clock` must be the dispatcher's (`Router`'s) clock: the deadline is compared with it.
    """

    default_budget_ms: int
    clock: Callable[[], float] = time.monotonic
    wall_clock_ms: Callable[[], float] = lambda: time.time() * 1000.0

    def make(
        self,
        job: JobRequest,
        *,
        tenant: str,
        agent_id: str | None = None,
        trace: TraceContext | None = None,
        tenant_name: str = "anonymous",
        priority: str = "",
        priority_note: str = "",
        gone: Callable[[], Awaitable[None]] | None = None,
        on_queued: Callable[[float], None] | None = None,
        resume: bool = True,
    ) -> Call:
        """The call of `job`: its budget from now on the router's clock, who asks and
        how its wait in line is heard (the `Call` attributes of the same names)."""
        budget_ms = remaining_budget_ms(
            timeout_ms=job.timeout_ms,
            deadline_unix_ms=job.deadline_unix_ms,
            default_timeout_ms=self.default_budget_ms,
            now_unix_ms=self.wall_clock_ms(),
        )
        deadline = self.clock() + budget_ms / 1000.0
        return Call(
            job=job,
            tenant=tenant,
            agent_id=agent_id,
            deadline=deadline,
            trace=trace,
            tenant_name=tenant_name,
            priority=priority,
            priority_note=priority_note,
            gone=gone,
            on_queued=on_queued,
            resume=resume,
        )
