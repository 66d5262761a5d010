"""Anthropic's Messages shapes, pure: a request as job fields (or the refusal naming the
field), an answer as a message, and a job's stream as Anthropic's event sequence."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from router.attempts.route import Route
from router.http.anthropic_answer import AnthropicEvents, message_body, stop_reason_of
from router.http.anthropic_request import messages_job_fields
from services.errors import ErrorCode, InferbusError
from services.wire import ErrorInfo, JobRequest, JobResponse, Piece, Result, Thinking, Usage
from services.wire_features import FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta

BASE: dict[str, Any] = {"model": "m", "max_tokens": 16}
USER = {"role": "user", "content": "hi"}
TOOL: dict[str, Any] = {"name": "get_weather", "input_schema": {"type": "object"}}


def fields_of(**body: Any) -> dict[str, Any]:
    fields = messages_job_fields({**BASE, **body})
    assert isinstance(fields, dict), fields
    JobRequest.model_validate(fields)  # what the edge does next: it must be a valid job
    return fields


def test_a_plain_request_with_a_system_prompt_and_sampling() -> None:
    fields = fields_of(
        system=[{"type": "text", "text": "be"}, {"type": "text", "text": "brief"}],
        messages=[USER],
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.9,
        top_k=7,
        metadata={"user_id": "u-1"},
        stream=True,
    )
    assert fields["messages"] == [{"role": "system", "content": "be\n\nbrief"}, USER]
    assert fields["params"] == {
        "max_tokens": 16,
        "stop": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u-1",
    }
    assert fields["extra"] == {"top_k": 7}
    assert fields["stream"] is True


def test_a_tool_round_trip_becomes_openai_shaped_messages() -> None:
    fields = fields_of(
        tools=[{**TOOL, "description": "weather"}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[
            USER,
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"c": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and then?"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "sunny"}],
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True},
                ],
            },
        ],
    )
    function = {"name": "get_weather", "arguments": '{"c":1}'}
    call = {"id": "toolu_1", "type": "function", "function": function}
    assert fields["messages"] == [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: "},
        {"role": "user", "content": "and then?"},
    ]
    assert fields["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object"},
                "description": "weather",
            },
        }
    ]
    assert fields["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert fields["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")],
)
def test_tool_choice_kinds(choice: dict[str, Any], expected: str) -> None:
    assert fields_of(messages=[USER], tools=[TOOL], tool_choice=choice)["tool_choice"] == expected


def test_images_thinking_and_output_format() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="},
    }
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    fields = fields_of(
        messages=[{"role": "user", "content": [image, url, {"type": "text", "text": "what"}]}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
    )
    assert fields["messages"] == [
        {
            "role": "user",
            "content": "what",
            "images": ["data:image/png;base64,QQ==", "https://example.com/a.png"],
        }
    ]
    assert fields["extra"] == {"chat_template_kwargs": {"enable_thinking": True}}
    assert fields["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert "extra" not in fields_of(messages=[USER], thinking={"type": "disabled"})


def deep(levels: int) -> dict[str, Any]:
    """An object schema nested `levels` times."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}}
    return schema


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m", "messages": [USER]}, "max_tokens"),
        ({**BASE, "max_tokens": 0, "messages": [USER]}, "max_tokens"),
        ({"max_tokens": 5, "messages": [USER]}, "model"),
        ({**BASE, "messages": []}, "messages"),
        ({**BASE, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({**BASE, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {**BASE, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {**BASE, "messages": [{"role": "user", "content": [{"type": "tool_use"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {**BASE, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        ({**BASE, "messages": [USER], "system": 5}, "system"),
        ({**BASE, "messages": [USER], "tools": [{"name": "x"}]}, "tools[0].input_schema"),
        (
            {**BASE, "messages": [USER], "tools": [{"type": "bash_20250124", "name": "bash"}]},
            "tools[0].type",
        ),
        ({**BASE, "messages": [USER], "tool_choice": {"type": "tool"}}, "tool_choice.type"),
        ({**BASE, "messages": [USER], "thinking": {"type": "lots"}}, "thinking.type"),
        ({**BASE, "messages": [USER], "mcp_servers": [{"url": "x"}]}, "mcp_servers"),
        ({**BASE, "messages": [USER], "output_config": {"format": {"type": "x"}}}, "output_config"),
        (
            {**BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": {}}]}]},
            "messages[0].content[0].text",
        ),
        ({**BASE, "messages": [USER], "system": [{"type": "text", "text": 5}]}, "system[0].text"),
        (
            {**BASE, "messages": [USER], "tools": [{"name": "x", "input_schema": deep(130)}]},
            "tools[0].input_schema",
        ),
        (
            {
                **BASE,
                "messages": [USER],
                "output_config": {"format": {"type": "json_schema", "schema": deep(130)}},
            },
            "output_config.format.schema",
        ),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], field: str) -> None:
    refused = messages_job_fields(body)
    assert isinstance(refused, InferbusError)
    assert refused.code == ErrorCode.BAD_REQUEST
    assert refused.message.startswith(field)


@pytest.mark.parametrize(
    ("finish", "calls", "stop"),
    [
        ("stop", False, "end_turn"),
        (None, False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("stop", True, "tool_use"),
        ("length", True, "max_tokens"),
        ("content_filter", False, "refusal"),
    ],
)
def test_stop_reasons(finish: str | None, calls: bool, stop: str) -> None:
    assert stop_reason_of(finish, calls) == stop


CALL = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments='{"c":1}'))


def answer(
    text: str = "", calls: list[ToolCall] | None = None, finish: str = "stop"
) -> JobResponse:
    usage = Usage(prompt_tokens=3, completion_tokens=5)
    result = Result(text=text, finish_reason=finish, usage=usage, tool_calls=calls)
    return JobResponse(job_id="j1", status="ok", model="m", result=result)


def test_a_whole_message_with_text_and_a_tool_use() -> None:
    body = message_body(answer("let me look", [CALL], "tool_calls"), Route(), "asked")
    assert body["id"] == "msg_j1"
    assert body["model"] == "m"
    assert body["content"] == [
        {"type": "text", "text": "let me look"},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"c": 1}},
    ]
    assert body["stop_reason"] == "tool_use"
    assert body["usage"] == {"input_tokens": 3, "output_tokens": 5}


def events_of(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in data.decode().strip().split("\n\n"):
        name, payload = block.split("\n")
        out.append((name.removeprefix("event: "), json.loads(payload.removeprefix("data: "))))
    return out


def test_a_stream_of_text_then_a_split_tool_call() -> None:
    form = AnthropicEvents("j1", "m")
    opening = ToolCallDelta(
        index=0, id="call_1", type="function", function=FunctionCallDelta(name="get_weather")
    )
    data = form.delta("let ")
    data += form.delta("me")
    data += form.delta([opening])
    data += form.delta([ToolCallDelta(index=0, function=FunctionCallDelta(arguments='{"c"'))])
    data += form.delta([ToolCallDelta(index=0, function=FunctionCallDelta(arguments=":1}"))])
    data += form.final(answer("let me", [CALL], "tool_calls"), Route())
    events = events_of(data)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[6][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    arguments = "".join(data["delta"]["partial_json"] for _, data in events[7:9])
    assert json.loads(arguments) == {"c": 1}
    assert [data["index"] for _, data in events[6:10]] == [1, 1, 1, 1]
    assert events[10][1]["delta"]["stop_reason"] == "tool_use"
    assert events[10][1]["usage"] == {"input_tokens": 3, "output_tokens": 5}


def test_a_replay_with_no_pieces_still_streams_its_whole_answer() -> None:
    form = AnthropicEvents("j1", "m")
    events = events_of(form.final(answer("all at once"), Route()))
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "all at once"}


def test_a_stream_broken_after_its_first_piece_ends_with_an_error_event() -> None:
    form = AnthropicEvents("j1", "m")
    data = form.delta("partial")
    error = ErrorInfo(code=ErrorCode.BACKEND_UNAVAILABLE, message="node lost")
    data += form.final(JobResponse(job_id="j1", status="error", error=error), Route())
    events = events_of(data)
    assert [name for name, _ in events][-2:] == ["content_block_stop", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "node lost"},
    }


def accumulated(data: bytes) -> list[Any]:
    """The content blocks the official client builds from a stream's events."""
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    snapshot = None
    for name, body in events_of(data):
        if name != "ping":
            snapshot = accumulate_event(
                event=adapter.validate_python(body), current_snapshot=snapshot, json_bufs={}
            )
    assert snapshot is not None
    return [
        block.model_dump(include={"type", "text", "thinking", "name"}) for block in snapshot.content
    ]


@pytest.mark.parametrize(
    ("pieces", "result", "blocks"),
    [
        (
            [Thinking("a"), "hello", Thinking("b")],
            Result(text="hello", thinking="ab", finish_reason="stop"),
            [
                {"type": "thinking", "thinking": "a"},
                {"type": "text", "text": "hello"},
                {"type": "thinking", "thinking": "b"},
            ],
        ),
        (
            [Thinking("a"), [ToolCallDelta.whole(0, CALL)], Thinking("b")],
            Result(thinking="ab", tool_calls=[CALL], finish_reason="tool_calls"),
            [
                {"type": "thinking", "thinking": "a"},
                {"type": "tool_use", "name": "get_weather"},
                {"type": "thinking", "thinking": "b"},
            ],
        ),
        (
            [Thinking("a")],
            Result(text="", thinking="a", finish_reason="length"),
            [{"type": "thinking", "thinking": "a"}, {"type": "text", "text": ""}],
        ),
    ],
)
def test_reasoning_after_the_answer_began_repeats_nothing(
    pieces: list[Piece], result: Result, blocks: list[dict[str, Any]]
) -> None:
    form = AnthropicEvents("j1", "m")
    data = b"".join(form.delta(piece) for piece in pieces)
    data += form.final(JobResponse(job_id="j1", status="ok", result=result), Route())
    assert accumulated(data) == blocks
