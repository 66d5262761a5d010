"""Circuit breakers per (node, slot kind): a pure state machine plus one small mutable board.

DESIGN §6: 3 failures within `window_s` open a breaker for `open_s`; then exactly one trial
request goes through; its success closes the breaker, its failure reopens it. BUSY and the
caller's own mistakes are *neutral*: they say nothing about the node's health.

Decisions:
- Keyed by slot kind, not job type: "vision" for vision, "llm" for llm and code (a code job
  runs on the node's llm slots and runtime, so a broken llm runtime fails both).
- The router's own request timeout (`timed_out=True`) is a failure; a DEADLINE_EXCEEDED
  *reply* from the worker is neutral: the caller's budget ran out, the node is fine.
- A trial that never reports back (its task was lost) is presumed lost after `open_s`, and
  another trial may go; callers should still record every allowed request (neutral if
  cancelled) so a trial does not block the node that long.
- Outcomes recorded while open, or while half-open with no trial in flight, come from
  requests started before the breaker opened and change nothing.

No clock of its own and no I/O: every function takes `now` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.errors import ErrorCode

__all__ = [
    "CLOSED",
    "BreakerBoard",
    "BreakerSettings",
    "BreakerState",
    "Outcome",
    "allows",
    "breaker_kind",
    "current",
    "outcome_of",
    "record",
]

Outcome = Literal["success", "failure", "neutral"]
_KINDS = ("llm", "vision", "embed")  # every `breaker_kind` of a job type
Status = Literal["closed", "open", "half_open"]


class BreakerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    failures_to_open: int = Field(default=3, gt=0)
    window_s: float = Field(default=60, gt=0)
    open_s: float = Field(default=120, gt=0)


# Every code is listed, so a new code cannot silently default to one side.
_OUTCOME_OF_CODE: dict[ErrorCode, Outcome] = {
    ErrorCode.BACKEND_UNAVAILABLE: "failure",
    ErrorCode.BACKEND_ERROR: "failure",
    ErrorCode.INTERNAL: "failure",
    ErrorCode.BUSY: "neutral",
    ErrorCode.BAD_REQUEST: "neutral",
    ErrorCode.CONTEXT_EXCEEDED: "neutral",
    ErrorCode.IDEMPOTENCY_MISMATCH: "neutral",
    ErrorCode.PAYLOAD_TOO_LARGE: "neutral",
    ErrorCode.MODEL_NOT_FOUND: "neutral",
    ErrorCode.DEADLINE_EXCEEDED: "neutral",  # the caller's budget, not the node's health
    ErrorCode.NO_ROUTE: "neutral",  # the router's own verdict, never a node's
    ErrorCode.CANCELLED: "neutral",  # the caller went away
}


def outcome_of(
    code: ErrorCode | None, *, no_responders: bool = False, timed_out: bool = False
) -> Outcome:
    """What one attempt says about the node: `code` None is an ok reply."""
    if no_responders or timed_out:
        return "failure"
    return "success" if code is None else _OUTCOME_OF_CODE[code]


def breaker_kind(job_type: str) -> str:
    """The breaker key's second half: code jobs share the node's llm breaker."""
    return "llm" if job_type == "code" else job_type


@dataclass(frozen=True)
class BreakerState:
    status: Status
    failures: tuple[float, ...]  # times of failures within the window (closed only)
    opened_at: float | None
    trial_in_flight: bool
    trial_started_at: float | None = None


CLOSED = BreakerState("closed", (), None, False)


def _opened(now: float) -> BreakerState:
    return BreakerState("open", (), now, False)


def current(state: BreakerState, now: float, settings: BreakerSettings) -> BreakerState:
    """The state time alone has made of `state`: open becomes half-open, a lost trial ends."""
    opened_at, trial_started_at = state.opened_at, state.trial_started_at
    if state.status == "open" and opened_at is not None and now >= opened_at + settings.open_s:
        return replace(state, status="half_open", trial_in_flight=False)
    trial_lost = trial_started_at is not None and now >= trial_started_at + settings.open_s
    if state.status == "half_open" and trial_lost:
        return replace(state, trial_in_flight=False, trial_started_at=None)
    return state


def allows(state: BreakerState, now: float, settings: BreakerSettings) -> tuple[bool, BreakerState]:
    """Whether a request may go now, and the state after letting it (a trial marks itself)."""
    state = current(state, now, settings)
    if state.status == "closed":
        return True, state
    if state.status == "half_open" and not state.trial_in_flight:
        return True, replace(state, trial_in_flight=True, trial_started_at=now)
    return False, state


def record(
    state: BreakerState, outcome: Outcome, now: float, settings: BreakerSettings
) -> BreakerState:
    """The state after one attempt's outcome arrives at `now`."""
    state = current(state, now, settings)
    if state.status == "closed":
        recent = tuple(t for t in state.failures if now - t <= settings.window_s)
        if outcome == "failure":
            recent += (now,)
            if len(recent) >= settings.failures_to_open:
                return _opened(now)
        return replace(state, failures=recent)
    if state.status == "half_open" and state.trial_in_flight:
        if outcome == "success":
            return CLOSED
        if outcome == "failure":
            return _opened(now)
        return replace(state, trial_in_flight=False, trial_started_at=None)
    return state


def heard_from(state: BreakerState, now: float) -> BreakerState:
    """An open breaker whose node has just announced itself healthy may try once now.

    A node that failed while reconnecting to another NATS server (no responders for a
    moment) would otherwise stay shut out for `open_s` although its next heartbeat proves
    it is back. A dead node sends no heartbeat, and one whose runtimes fail reports them
    unhealthy, so neither is let back early: the caller only calls this for a record with
    every runtime healthy, received after the breaker opened.
    """
    if state.status == "open" and state.opened_at is not None and now > state.opened_at:
        return replace(state, status="half_open", trial_in_flight=False, trial_started_at=None)
    return state


class BreakerBoard:
    """Every breaker the router keeps, keyed by (node_id, slot kind); mutable, clock-free."""

    def __init__(self, settings: BreakerSettings | None = None) -> None:
        self.settings = settings or BreakerSettings()
        self._states: dict[tuple[str, str], BreakerState] = {}

    def _get(self, node: str, job_type: str) -> BreakerState:
        return self._states.get((node, breaker_kind(job_type)), CLOSED)

    def allows(self, node: str, job_type: str, now: float) -> bool:
        """Ask before each attempt; a True may have started the half-open trial."""
        allowed, state = allows(self._get(node, job_type), now, self.settings)
        self._keep(node, job_type, state)
        return allowed

    def is_open(self, node: str, job_type: str, now: float) -> bool:
        """Whether a `job_type` request to `node` would be refused now: O(1), no change."""
        key = (node, breaker_kind(job_type))
        state = self._states.get(key)
        return state is not None and not allows(state, now, self.settings)[0]

    def _keep(self, node: str, job_type: str, state: BreakerState) -> None:
        """Store a state; `forget` drops a node's states when the fleet forgets the node."""
        self._states[node, breaker_kind(job_type)] = state

    def record(self, node: str, job_type: str, outcome: Outcome, now: float) -> None:
        self._keep(node, job_type, record(self._get(node, job_type), outcome, now, self.settings))

    def status(self, node: str, job_type: str, now: float) -> Status:
        return current(self._get(node, job_type), now, self.settings).status

    def open_nodes(self, job_type: str, now: float) -> frozenset[str]:
        """Nodes that would refuse a `job_type` request now: selection's exclude set."""
        kind = breaker_kind(job_type)
        return frozenset(
            node
            for (node, k), state in self._states.items()
            if k == kind and not allows(state, now, self.settings)[0]
        )

    def snapshot(self, now: float) -> dict[str, dict[str, str]]:
        """node → slot kind → status, for every breaker that has seen a request."""
        view: dict[str, dict[str, str]] = {}
        for (node, kind), state in sorted(self._states.items()):
            view.setdefault(node, {})[kind] = current(state, now, self.settings).status
        return view

    def of_node(self, node: str, now: float) -> dict[str, str]:
        """Slot kind → status for one node's breakers that have seen a request: O(1)."""
        return {
            kind: current(state, now, self.settings).status
            for kind in _KINDS
            if (state := self._states.get((node, kind))) is not None
        }

    def heard_from(self, node: str, now: float) -> None:
        """The node announced itself with every runtime healthy (see `heard_from`): O(1)."""
        for kind in _KINDS:
            state = self._states.get((node, kind))
            if state is not None:
                self._states[node, kind] = heard_from(state, now)

    def forget(self, node: str) -> None:
        """Drop a node's breakers, when the fleet view drops the node: O(1)."""
        for kind in _KINDS:
            self._states.pop((node, kind), None)
