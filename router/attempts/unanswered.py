"""The answer a request gets when no target answered it: pure, a row per case in
`tests/test_unanswered.py`.

In order, the first that applies:

| what happened                                         | answer                        |
|-------------------------------------------------------|-------------------------------|
| a target's failure is conclusive (the cloud chain's)  | that failure                  |
| the budget ran out                                    | DEADLINE_EXCEEDED             |
| every attempt was BUSY                                | BUSY, the smallest Retry-After|
| nothing attempted; only what the job needs is missing | that (BAD_REQUEST / NO_ROUTE) |
| nothing attempted, nothing in the way; or every       | MODEL_NOT_FOUND               |
|   attempt said the model is not there                 |                               |
| anything else                                         | NO_ROUTE, naming the last     |
|                                                       | attempt's outcome, or that    |
|                                                       | NATS is down                  |

"Nothing in the way" means no open breaker kept the request from a node that serves it
and the router's NATS connection is up: then nothing serves the model at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.errors import ErrorCode, InferbusError
from services.wire import JobResponse

__all__ = ["Unanswered", "final_failure"]


@dataclass(frozen=True, slots=True)
class Unanswered:
    """What a request that no target answered went through.

    Attributes:
        wanted: the job's model, else its type (for the messages).
        outcomes: each attempt's outcome as the route lists it ("ok", a code, a reason).
        retry_after_ms: what each BUSY answer asked for.
        budget_left_s: the request's budget left now.
        connected: whether the router's NATS connection is up.
        skipped_open: an open breaker kept the request from a node that serves it.
        conclusive: a target's failure that says more than any rule here.
        lacking: asked only when `nowhere` and the job needs capabilities: why no node
            can do what the job needs (the fleet's `what_is_missing`), if that is why.
    """

    job_id: str
    wanted: str
    outcomes: tuple[str, ...] = ()
    retry_after_ms: tuple[int, ...] = ()
    budget_left_s: float = 1.0
    connected: bool = True
    skipped_open: bool = False
    conclusive: JobResponse | None = None
    lacking: InferbusError | None = None

    @property
    def nowhere(self) -> bool:
        """Nothing was attempted and nothing stood in the way: nothing serves it."""
        return not self.outcomes and not self.skipped_open and self.connected

    @property
    def asks_what_is_lacking(self) -> bool:
        """Whether `lacking` decides (for a job that needs capabilities): it is looked up
        only then, since it costs a selection over the fleet."""
        return self.nowhere and self.conclusive is None and self.budget_left_s > 0


def final_failure(facts: Unanswered) -> JobResponse:
    """The one answer (module docstring's table)."""
    if facts.conclusive is not None:
        return facts.conclusive
    outcomes, wanted = facts.outcomes, facts.wanted
    if facts.budget_left_s <= 0:
        return _fail(facts, ErrorCode.DEADLINE_EXCEEDED, "the budget ran out before an answer")
    if outcomes and all(outcome == ErrorCode.BUSY for outcome in outcomes):
        message = f"every node that serves it is busy ({len(outcomes)} tried)"
        retry = min(facts.retry_after_ms, default=1000)
        error = InferbusError(ErrorCode.BUSY, message, retry_after_ms=retry)
        return JobResponse.failure(facts.job_id, error)
    if facts.lacking is not None:
        return JobResponse.failure(facts.job_id, facts.lacking)
    if facts.nowhere or (outcomes and all(o == ErrorCode.MODEL_NOT_FOUND for o in outcomes)):
        return _fail(facts, ErrorCode.MODEL_NOT_FOUND, f"nothing serves {wanted}")
    if not facts.connected and not outcomes:
        reason = "the router is not connected to NATS and nothing else serves it"
    elif outcomes:
        reason = f"nothing could serve it (last attempt: {outcomes[-1]})"
    else:
        reason = "nothing serves it"
    return _fail(facts, ErrorCode.NO_ROUTE, f"{wanted} — {reason}")


def _fail(facts: Unanswered, code: ErrorCode, message: str) -> JobResponse:
    return JobResponse.failure(facts.job_id, InferbusError(code, message))
