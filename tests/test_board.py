"""The health board's breakers as a pure state machine: every clock value is passed in."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from router.attempts.board import (
    CLOSED,
    BreakerBoard,
    BreakerSettings,
    Outcome,
    allows,
    record,
)


def fail_at(board: BreakerBoard, *times: float, node: str = "gpu1", job_type: str = "llm") -> None:
    for t in times:
        assert board.allows(node, job_type, t)
        board.record(node, job_type, "failure", t)


@pytest.mark.parametrize(
    ("times", "status"),
    [
        ((0, 10, 20), "open"),
        ((0, 30, 60), "open"),
        ((0, 30, 61), "closed"),
        ((0, 50, 100, 140), "closed"),
        ((0, 50, 100, 105), "open"),
        ((0, 10), "closed"),
    ],
)
def test_three_failures_within_a_minute_open_the_breaker(
    times: tuple[float, ...], status: str
) -> None:
    board = BreakerBoard()
    fail_at(board, *times)
    assert board.status("gpu1", "llm", times[-1]) == status


def test_open_breaker_refuses_until_open_s_then_lets_one_trial() -> None:
    board = BreakerBoard()
    fail_at(board, 0, 1, 2)
    for now in (2, 60, 121.9):
        assert not board.allows("gpu1", "llm", now)
        assert board.open_nodes("llm", now) == {"gpu1"}
    assert board.status("gpu1", "llm", 122) == "half_open"
    assert board.open_nodes("llm", 122) == frozenset()  # so the trial can happen
    assert board.allows("gpu1", "llm", 122)
    assert not board.allows("gpu1", "llm", 123)  # a second concurrent request
    assert board.open_nodes("llm", 123) == {"gpu1"}


@pytest.mark.parametrize(
    ("outcome", "status_after", "allowed_at_130", "allowed_at_250"),
    [
        ("success", "closed", True, True),
        ("failure", "open", False, True),  # reopened at 125 for another full 120 s
        ("neutral", "half_open", True, True),  # trial ended undecided: next one may go
    ],
)
def test_trial_outcome_decides(
    outcome: Outcome, status_after: str, allowed_at_130: bool, allowed_at_250: bool
) -> None:
    board = BreakerBoard()
    fail_at(board, 0, 1, 2)
    assert board.allows("gpu1", "llm", 122)
    board.record("gpu1", "llm", outcome, 125)
    assert board.status("gpu1", "llm", 125) == status_after
    assert board.allows("gpu1", "llm", 130) is allowed_at_130
    if outcome == "failure":
        assert not board.allows("gpu1", "llm", 244.9)
    assert board.allows("gpu1", "llm", 250) is allowed_at_250


def test_trial_success_clears_old_failures() -> None:
    board = BreakerBoard()
    fail_at(board, 0, 1, 2)
    assert board.allows("gpu1", "llm", 122)
    board.record("gpu1", "llm", "success", 123)
    fail_at(board, 124, 125)
    assert board.status("gpu1", "llm", 125) == "closed"


def test_busy_reply_does_not_trip_breaker() -> None:
    board = BreakerBoard()
    for t in range(20):
        assert board.allows("gpu1", "llm", t)
        board.record("gpu1", "llm", "neutral", t)  # BUSY is neutral (test_decision.py)
    assert board.status("gpu1", "llm", 20) == "closed"


def test_late_outcomes_do_not_change_an_open_breaker() -> None:
    settings = BreakerSettings()
    state = CLOSED
    for t in (0, 1, 2):
        state = record(state, "failure", t, settings)
    assert record(state, "success", 3, settings) == state
    _, trial = allows(state, 122, settings)
    undecided = record(trial, "neutral", 123, settings)
    # no trial in flight now: a straggler's success does not close it
    assert record(undecided, "success", 124, settings) == undecided
    allowed, next_trial = allows(undecided, 124, settings)
    assert allowed
    assert next_trial.trial_in_flight


def test_lost_trial_is_presumed_gone_after_open_s() -> None:
    board = BreakerBoard()
    fail_at(board, 0, 1, 2)
    assert board.allows("gpu1", "llm", 122)
    assert not board.allows("gpu1", "llm", 241)
    assert board.allows("gpu1", "llm", 242)


def test_nodes_and_slot_kinds_are_independent() -> None:
    board = BreakerBoard()
    fail_at(board, 0, 1, 2, node="gpu1", job_type="code")  # code shares the llm breaker
    fail_at(board, 0, 1, node="gpu2", job_type="llm")
    assert board.status("gpu1", "llm", 3) == "open"
    assert board.allows("gpu1", "vision", 3)
    assert board.allows("gpu2", "llm", 3)
    assert board.open_nodes("llm", 3) == board.open_nodes("code", 3) == {"gpu1"}
    assert board.open_nodes("vision", 3) == frozenset()
    assert board.snapshot(3) == {
        "gpu1": {"llm": "open", "vision": "closed"},
        "gpu2": {"llm": "closed"},
    }
    assert board.snapshot(200)["gpu1"]["llm"] == "half_open"
    board.forget("gpu1", 200)
    assert board.snapshot(3) == {"gpu2": {"llm": "closed"}}


def test_custom_settings() -> None:
    board = BreakerBoard(BreakerSettings(failures_to_open=1, window_s=5, open_s=10))
    fail_at(board, 0)
    assert not board.allows("gpu1", "llm", 9.9)
    assert board.allows("gpu1", "llm", 10)


@pytest.mark.parametrize(
    "bad",
    [{"failures_to_open": 0}, {"window_s": 0}, {"open_s": -1}, {"opens_s": 1}],
)
def test_settings_reject_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        BreakerSettings(**bad)


def test_a_healthy_announcement_after_opening_allows_one_trial() -> None:
    board = BreakerBoard(BreakerSettings(failures_to_open=1, window_s=60, open_s=120))
    board.record("n1", "llm", "failure", now=10.0)
    assert board.status("n1", "llm", now=11.0) == "open"
    board.heard_from("n1", now=12.0)
    assert board.status("n1", "llm", now=12.0) == "half_open"
    assert board.allows("n1", "llm", now=12.0)
    assert not board.allows("n1", "llm", now=12.5)  # one trial only
    board.record("n1", "llm", "success", now=13.0)
    assert board.status("n1", "llm", now=13.0) == "closed"


def test_an_announcement_leaves_closed_breakers_and_other_nodes_alone() -> None:
    board = BreakerBoard(BreakerSettings(failures_to_open=1, window_s=60, open_s=120))
    board.record("n1", "llm", "failure", now=10.0)
    board.record("n2", "llm", "failure", now=10.0)
    board.heard_from("n2", now=11.0)
    assert board.status("n1", "llm", now=11.0) == "open"
    assert board.status("n2", "llm", now=11.0) == "half_open"


def test_queries_touch_one_node_and_forget_drops_it() -> None:
    board = BreakerBoard()
    for node in ("a", "b", "c"):
        board.allows(node, "llm", 0)
        board.record(node, "llm", "success", 0)
    fail_at(board, 1, 2, 3, node="b")
    assert board.is_open("b", "llm", 4)
    assert not board.is_open("a", "llm", 4)
    assert not board.is_open("b", "vision", 4)
    assert board.open_nodes("code", 4) == frozenset({"b"})  # code shares the llm breaker
    board.forget("b", 4)
    assert not board.is_open("b", "llm", 4)
    assert board.open_nodes("llm", 4) == frozenset()
    assert "b" not in board.snapshot(4)


def test_is_open_never_starts_a_trial() -> None:
    board = BreakerBoard(BreakerSettings(open_s=10))
    fail_at(board, 0, 1, 2)
    for _ in range(3):
        assert not board.is_open("gpu1", "llm", 13)  # half-open: a trial may go
    assert board.allows("gpu1", "llm", 13)  # the trial
    assert board.is_open("gpu1", "llm", 13)  # its one trial is in flight
