"""The one decision after every attempt: answer the caller or try the next target, and
what the attempt says about the target's health (the fault-attribution rules).

Every target's outcome comes here, whatever its kind (router/attempts/targets.py). A target
that makes several calls keeps its own table between them nested behind this one: the
cloud chain's per-reason table (router/cloud/actions.py) chooses among its (provider, key,
model) calls, and the chain's outcome as a whole is judged here like any other.

Pure: an `Outcome` in, a `Verdict` out; no clock, no I/O. Every rule is a row in
`tests/test_decision.py`, and `ops/offload_routing.md` states them for operators:

- An ok answer is returned and is a success.
- The request's own fault (malformed, too large, too long for the context, a reused key)
  is returned at once and is neutral: every node would say the same.
- The caller's budget running out is never the target's fault: a DEADLINE_EXCEEDED reply
  (the worker's own clock) is returned, neutral; the router's own timer firing while the
  budget was the binding limit is returned as DEADLINE_EXCEEDED, neutral.
- A shorter limit of the router's own (the per-attempt cap, the first-token timeout)
  running out, on the router's timer or the worker's, is the target's fault: next
  target, failure.
- A cancellation (the caller went away, or the router stopped waiting) is neutral.
- BUSY and "model not here" move on, neutral: load and a stale catalogue are not faults.
- No responders while the router's own connection is down or settling after a reconnect
  is the bus's fault, neutral; otherwise the node is gone: next target, failure.
- A node found gone or hung by the liveness probe while it held the job: next, failure.
- Runtime and worker failures (BACKEND_UNAVAILABLE, BACKEND_ERROR, INTERNAL): next, failure.
- Once a streamed answer has delivered text, whatever follows is returned: starting over
  on the next target would repeat text. The dispatcher may still go on with a job that
  continues the text so far (router/attempts/resume.py), when the failure was the node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from router.attempts.board import Outcome as Health
from router.attempts.route import Attempt
from services.errors import ErrorCode
from services.wire import JobResponse

__all__ = ["Action", "Ending", "Health", "Outcome", "Verdict", "next_action"]

# How an attempt ended, seen from the router.
Ending = Literal[
    "answered",  # the target's own answer (ok or a typed error)
    "no_responders",  # nobody listens on the node's subject
    "bus_down",  # the router's own connection could not carry the job
    "timed_out",  # the router's timer fired before an answer
    "lost",  # the liveness probe found the node gone or hung while it held the job
    "abandoned",  # the router stopped waiting: the caller went away
]
Action = Literal["return", "next"]

# The request's own fault: the same answer anywhere.
_REQUEST_FAULTS = frozenset(
    {
        ErrorCode.BAD_REQUEST,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.IDEMPOTENCY_MISMATCH,
        ErrorCode.CONTEXT_EXCEEDED,
    }
)
# Every code is listed, so a new code cannot silently default to one side.
_ANSWERED: dict[ErrorCode, tuple[Action, Health]] = {
    **{code: ("return", "neutral") for code in _REQUEST_FAULTS},
    ErrorCode.DEADLINE_EXCEEDED: ("return", "neutral"),
    ErrorCode.CANCELLED: ("return", "neutral"),
    ErrorCode.BUSY: ("next", "neutral"),
    ErrorCode.MODEL_NOT_FOUND: ("next", "neutral"),
    ErrorCode.NO_ROUTE: ("next", "neutral"),
    ErrorCode.BACKEND_UNAVAILABLE: ("next", "failure"),
    ErrorCode.BACKEND_ERROR: ("next", "failure"),
    ErrorCode.INTERNAL: ("next", "failure"),
}


@dataclass(frozen=True)
class Outcome:
    """One attempt's result, classified where it happened (the NATS or HTTP edge).

    `attempts` are the calls the target made, as the answer's route lists them: one for
    a node or a runtime, one per (provider, key, model) for a cloud chain. `conclusive`:
    when nothing after it answers either, this answer is the request's (a cloud chain's
    failure already says most: when its keys cool down, which model it ended on).
    """

    response: JobResponse
    ending: Ending = "answered"
    delivered: int = 0  # streamed pieces already handed to the caller
    # The wait (and the budget the target was given) was the caller's remaining budget,
    # not a shorter cap of the router's own.
    budget_bound: bool = True
    bus_settling: bool = False  # the router's connection was down or just reconnected
    elapsed_ms: float = 0.0
    attempts: tuple[Attempt, ...] = ()
    conclusive: bool = False

    @property
    def code(self) -> ErrorCode | None:
        return self.response.error.code if self.response.error else None


@dataclass(frozen=True)
class Verdict:
    action: Action
    health: Health


def next_action(outcome: Outcome) -> Verdict:
    """What happens after `outcome`, and whether it counts against the target."""
    health = _health(outcome)
    if outcome.delivered > 0:
        return Verdict("return", health)
    if outcome.ending == "answered":
        code = outcome.code
        if code == ErrorCode.DEADLINE_EXCEEDED and not outcome.budget_bound:
            return Verdict("next", health)  # our per-attempt cap ran out, not the budget
        return Verdict("return", health) if code is None else Verdict(_ANSWERED[code][0], health)
    if outcome.ending == "abandoned":
        return Verdict("return", health)
    if outcome.ending == "timed_out" and outcome.budget_bound:
        return Verdict("return", health)
    return Verdict("next", health)


def _health(outcome: Outcome) -> Health:
    ending = outcome.ending
    if ending == "answered":
        code = outcome.code
        if code == ErrorCode.DEADLINE_EXCEEDED and not outcome.budget_bound:
            return "failure"
        return "success" if code is None else _ANSWERED[code][1]
    if ending in ("abandoned", "bus_down"):
        return "neutral"
    if ending == "timed_out":
        return "neutral" if outcome.budget_bound else "failure"
    # no_responders, lost: the node, unless the router's own connection explains it
    return "neutral" if outcome.bus_settling else "failure"
