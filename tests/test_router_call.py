"""The call made once at the edge, by tables: its deadline, its trace context, and how a
kept answer replays to a stream."""

from __future__ import annotations

import pytest

from router.serving.call import Calls, TraceContext, trace_context
from services.wire import JobRequest, Result, replay_pieces
from services.wire_features import FunctionCall, ToolCall, ToolCallDelta

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("traceparent", "tracestate", "expected"),
    [
        (None, None, None),
        ("", "a=1", None),
        (PARENT, None, TraceContext(PARENT)),
        (PARENT, "congo=t61rcWkgMzE", TraceContext(PARENT, "congo=t61rcWkgMzE")),
        (f" {PARENT} ", "  ", TraceContext(PARENT)),
        (PARENT.upper(), None, None),  # hex is lowercase
        ("ff" + PARENT[2:], None, None),  # version ff is invalid
        (PARENT + "-extra", None, None),  # version 00 has exactly four fields
        ("01" + PARENT[2:] + "-extra", None, TraceContext("01" + PARENT[2:] + "-extra")),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None, None),  # all-zero trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", "a=1", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None, None),  # short
        ("not a traceparent", "a=1", None),
    ],
)
def test_trace_context_is_read_from_w3c_headers_or_is_none(
    traceparent: str | None, tracestate: str | None, expected: TraceContext | None
) -> None:
    assert trace_context(traceparent, tracestate) == expected


def test_a_trace_context_names_its_trace_and_parent() -> None:
    context = TraceContext(PARENT)
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.parent_id == "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("fields", "wall_ms", "left_s"),
    [
        ({}, 0.0, 5.0),  # no budget sent: the default
        ({"timeout_ms": 1500}, 0.0, 1.5),
        ({"timeout_ms": 0}, 0.0, 0.0),
        ({"deadline_unix_ms": 10_400}, 10_000.0, 0.4),  # the wall deadline is sooner
        ({"timeout_ms": 300, "deadline_unix_ms": 99_000}, 10_000.0, 0.3),
        ({"deadline_unix_ms": 9_000}, 10_000.0, -1.0),  # already past on arrival
    ],
)
def test_a_calls_deadline_is_its_budget_on_the_routers_clock(
    fields: dict[str, int], wall_ms: float, left_s: float
) -> None:
    calls = Calls(5_000, clock=lambda: 100.0, wall_clock_ms=lambda: wall_ms)
    call = calls.make(JobRequest.model_validate({"prompt": "hi", **fields}), tenant="t")
    assert call.left_s(100.0) == pytest.approx(left_s)
    assert call.tenant == "t"
    assert call.on_piece is None


CALL = ToolCall(id="call_1", function=FunctionCall(name="f", arguments='{"a":1}'))
OTHER = ToolCall(id="call_2", function=FunctionCall(name="g", arguments="{}"))


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (Result(text="hello"), ["hello"]),
        (Result(text=""), [""]),  # a stream still gets its first piece
        (Result(text="", tool_calls=[CALL]), [[ToolCallDelta.whole(0, CALL)]]),
        (
            Result(text="let me look", tool_calls=[CALL, OTHER]),
            [[ToolCallDelta.whole(0, CALL), ToolCallDelta.whole(1, OTHER)], "let me look"],
        ),
    ],
)
def test_a_kept_answer_replays_its_tool_calls_whole_then_its_text(
    result: Result, expected: list[object]
) -> None:
    assert replay_pieces(result) == expected
