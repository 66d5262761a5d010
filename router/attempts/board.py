"""Circuit breakers per (node, slot kind): a pure state machine, and the board that holds
them (the breaker part of the health board, router/attempts/health.py).

DESIGN §6: 3 failures within `window_s` open a breaker for `open_s`; then exactly one trial
request goes through; its success closes the breaker, its failure reopens it. BUSY and the
caller's own mistakes are *neutral*: they say nothing about the node's health.

Decisions:
- Keyed by slot kind, not job type: "vision" for vision, "llm" for llm and code (a code job
  runs on the node's llm slots and runtime, so a broken llm runtime fails both).
- What counts as a failure is decided elsewhere (`router/attempts/decision.py`, the attribution
  rules); the board only takes "success" / "failure" / "neutral".
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

from router.attempts.health import HealthChange, HealthEvents
from services.wire import slot_kind

__all__ = [
    "CLOSED",
    "BreakerBoard",
    "BreakerSettings",
    "BreakerState",
    "Outcome",
    "allows",
    "current",
    "is_open",
    "record",
]

Outcome = Literal["success", "failure", "neutral"]
Status = Literal["closed", "open", "half_open"]


class BreakerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    failures_to_open: int = Field(default=3, gt=0)
    window_s: float = Field(default=60, gt=0)
    open_s: float = Field(default=120, gt=0)


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


def is_open(state: BreakerState, now: float, settings: BreakerSettings) -> bool:
    """Whether a request would be refused now, without starting a trial."""
    return not allows(state, now, settings)[0]


class BreakerBoard:
    """Every breaker the router keeps, by node then slot kind; mutable, clock-free.

    Indexed by node so that every query and update touches one node's breakers only:
    nothing here is in proportion to the fleet, and `forget` drops a node whole. Every
    status it writes that differs from the one before goes to `events`.
    `job_type` arguments take a job type or a slot kind (`slot_kind` maps them).
    """

    def __init__(
        self, settings: BreakerSettings | None = None, events: HealthEvents | None = None
    ) -> None:
        self.settings = settings or BreakerSettings()
        self._events = events if events is not None else HealthEvents()
        self._nodes: dict[str, dict[str, BreakerState]] = {}
        self._troubled: set[str] = set()  # nodes with a breaker that is not closed

    def _get(self, node: str, job_type: str) -> BreakerState:
        kinds = self._nodes.get(node)
        return kinds.get(slot_kind(job_type), CLOSED) if kinds else CLOSED

    def _put(self, node: str, kind: str, state: BreakerState, now: float) -> None:
        kinds = self._nodes.setdefault(node, {})
        before = kinds.get(kind, CLOSED).status
        kinds[kind] = state
        if state.status != "closed":
            self._troubled.add(node)
        elif all(other.status == "closed" for other in kinds.values()):
            self._troubled.discard(node)
        if state.status != before and self._events.listening:
            until = state.opened_at + self.settings.open_s if state.opened_at is not None else None
            change = HealthChange("breaker", node, kind, state.status, now, until=until)
            self._events.emit(change)

    def allows(self, node: str, job_type: str, now: float) -> bool:
        """Ask before each attempt; a True may have started the half-open trial."""
        kind = slot_kind(job_type)
        allowed, state = allows(self._get(node, kind), now, self.settings)
        self._put(node, kind, state, now)
        return allowed

    def record(self, node: str, job_type: str, outcome: Outcome, now: float) -> None:
        kind = slot_kind(job_type)
        self._put(node, kind, record(self._get(node, kind), outcome, now, self.settings), now)

    def status(self, node: str, job_type: str, now: float) -> Status:
        return current(self._get(node, job_type), now, self.settings).status

    def is_open(self, node: str, job_type: str, now: float) -> bool:
        """O(1): would this node refuse a `job_type` request now (no trial started)?"""
        return is_open(self._get(node, job_type), now, self.settings)

    def open_nodes(self, job_type: str, now: float) -> frozenset[str]:
        """Nodes that would refuse a `job_type` request now: selection's exclude set.

        Only nodes with a breaker that is not closed are looked at, so this is in
        proportion to the troubled nodes, not the fleet.
        """
        return frozenset(node for node in self._troubled if self.is_open(node, job_type, now))

    def snapshot(self, now: float) -> dict[str, dict[str, str]]:
        """node → slot kind → status, for every breaker that has seen a request."""
        return {
            node: {kind: current(state, now, self.settings).status for kind, state in kinds.items()}
            for node, kinds in sorted(self._nodes.items())
        }

    def of_node(self, node: str, now: float) -> dict[str, str]:
        """Slot kind → status for one node's breakers that have seen a request: O(1)."""
        kinds = self._nodes.get(node, {})
        return {kind: current(state, now, self.settings).status for kind, state in kinds.items()}

    def heard_from(self, node: str, now: float) -> None:
        """The node announced itself with every runtime healthy (see `heard_from`)."""
        kinds = self._nodes.get(node, {})
        for kind, state in list(kinds.items()):
            self._put(node, kind, heard_from(state, now), now)

    def forget(self, node: str, now: float) -> None:
        """Drop a node's breakers, when the fleet view drops the node (a "forgotten"
        change per breaker it had)."""
        kinds = self._nodes.pop(node, {})
        self._troubled.discard(node)
        if self._events.listening:
            for kind in kinds:
                self._events.emit(HealthChange("breaker", node, kind, "forgotten", now))
