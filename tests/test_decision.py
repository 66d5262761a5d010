"""The attribution rules as a table: one outcome in, (action, health) out."""

from __future__ import annotations

import pytest

from router.attempts.decision import Ending, Outcome, Verdict, next_action
from services.errors import ErrorCode, InferbusError
from services.wire import JobResponse

OK = JobResponse(job_id="j", status="ok")


def answer(code: ErrorCode | None) -> JobResponse:
    return OK if code is None else JobResponse.failure("j", InferbusError(code, "x"))


@pytest.mark.parametrize(
    ("code", "action", "health"),
    [
        (None, "return", "success"),
        (ErrorCode.BAD_REQUEST, "return", "neutral"),  # a runtime's 400: the request's fault
        (ErrorCode.PAYLOAD_TOO_LARGE, "return", "neutral"),
        (ErrorCode.CONTEXT_EXCEEDED, "return", "neutral"),
        (ErrorCode.IDEMPOTENCY_MISMATCH, "return", "neutral"),
        (ErrorCode.DEADLINE_EXCEEDED, "return", "neutral"),  # the worker's clock: the budget
        (ErrorCode.CANCELLED, "return", "neutral"),
        (ErrorCode.BUSY, "next", "neutral"),
        (ErrorCode.MODEL_NOT_FOUND, "next", "neutral"),
        (ErrorCode.NO_ROUTE, "next", "neutral"),
        (ErrorCode.BACKEND_UNAVAILABLE, "next", "failure"),
        (ErrorCode.BACKEND_ERROR, "next", "failure"),
        (ErrorCode.INTERNAL, "next", "failure"),
    ],
)
def test_answers(code: ErrorCode | None, action: str, health: str) -> None:
    assert next_action(Outcome(answer(code))) == Verdict(action, health)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("budget_bound", "action", "health"),
    [
        (True, "return", "neutral"),  # the worker's clock ran out on the caller's budget
        (False, "next", "failure"),  # it ran out on the router's per-attempt cap
    ],
)
def test_a_deadline_reply_is_the_nodes_fault_only_under_a_cap_of_ours(
    budget_bound: bool, action: str, health: str
) -> None:
    outcome = Outcome(answer(ErrorCode.DEADLINE_EXCEEDED), budget_bound=budget_bound)
    assert next_action(outcome) == Verdict(action, health)  # type: ignore[arg-type]


def test_every_code_has_a_row() -> None:
    for code in ErrorCode:
        next_action(Outcome(answer(code)))  # raises KeyError for a code without a rule


@pytest.mark.parametrize(
    ("ending", "budget_bound", "bus_settling", "action", "health"),
    [
        # The router's timer: the caller's budget is never the node's fault ...
        ("timed_out", True, False, "return", "neutral"),
        # ... but a limit of the router's own (attempt cap, first-token timeout) is.
        ("timed_out", False, False, "next", "failure"),
        ("no_responders", False, False, "next", "failure"),
        # No responders while the router's own connection is down or settling: the bus.
        ("no_responders", False, True, "next", "neutral"),
        ("lost", False, False, "next", "failure"),
        ("lost", False, True, "next", "neutral"),
        ("bus_down", False, False, "next", "neutral"),
        ("abandoned", False, False, "return", "neutral"),
    ],
)
def test_endings(
    ending: Ending, budget_bound: bool, bus_settling: bool, action: str, health: str
) -> None:
    failed = answer(ErrorCode.BACKEND_UNAVAILABLE)
    outcome = Outcome(failed, ending, budget_bound=budget_bound, bus_settling=bus_settling)
    assert next_action(outcome) == Verdict(action, health)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ending", "code", "health"),
    [
        ("answered", ErrorCode.BACKEND_ERROR, "failure"),
        ("timed_out", ErrorCode.BACKEND_UNAVAILABLE, "failure"),
        ("lost", ErrorCode.BACKEND_UNAVAILABLE, "failure"),
        ("answered", ErrorCode.CANCELLED, "neutral"),
    ],
)
def test_after_the_first_streamed_piece_the_answer_is_returned(
    ending: Ending, code: ErrorCode, health: str
) -> None:
    outcome = Outcome(answer(code), ending, delivered=3, budget_bound=False)  # e.g. idle timeout
    assert next_action(outcome) == Verdict("return", health)  # type: ignore[arg-type]
