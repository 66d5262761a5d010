"""Forced tool calls on runtimes that cannot be told to call a tool (Ollama): what the
request asks of the runtime, and how its constrained answer becomes the call — tables."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from services.errors import ErrorCode, InferbusError
from services.runtimes import ollama
from services.runtimes.base import ChatCall, ChatReply, StreamDelta, StreamEnd, StreamEvent
from services.runtimes.forced_tools import as_forced_reply, as_forced_stream, forced_call
from services.wire import JobRequest, Usage
from services.wire_features import ToolCallAssembler

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def call_of(**fields: Any) -> ChatCall:
    job = JobRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **fields})
    return ChatCall.of("m", job)


@pytest.mark.parametrize(
    ("fields", "forced_names"),
    [
        ({}, None),
        ({"tools": [WEATHER]}, None),
        ({"tools": [WEATHER], "tool_choice": "auto"}, None),
        ({"tools": [WEATHER], "tool_choice": "none"}, None),
        ({"tools": [WEATHER, TIME], "tool_choice": "required"}, ["get_weather", "get_time"]),
        ({"tools": [TIME, WEATHER], "tool_choice": NAMED}, ["get_weather"]),
    ],
)
def test_which_calls_are_forced(fields: dict[str, Any], forced_names: list[str] | None) -> None:
    forced = forced_call(call_of(**fields))
    if forced_names is None:
        assert forced is None
    else:
        assert forced is not None
        assert [tool.function.name for tool in forced.tools] == forced_names


def test_ollama_gets_the_tools_and_the_parameters_as_its_format() -> None:
    named = ollama.chat_body(call_of(tools=[WEATHER, TIME], tool_choice=NAMED), stream=False)
    assert [tool["function"]["name"] for tool in named["tools"]] == ["get_weather", "get_time"]
    assert named["format"] == WEATHER["function"]["parameters"]
    anyone = ollama.chat_body(call_of(tools=[WEATHER, TIME], tool_choice="required"), stream=True)
    jsonschema.validate({"name": "get_time", "arguments": {}}, anyone["format"])
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Oslo"}}, anyone["format"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_weather", "arguments": {}}, anyone["format"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "other", "arguments": {}}, anyone["format"])


def _reply(text: str, finish: str = "stop") -> ChatReply:
    return ChatReply(text=text, finish_reason=finish, usage=Usage(prompt_tokens=3))


@pytest.mark.parametrize(
    ("tools", "choice", "text", "name", "arguments"),
    [
        ([WEATHER], NAMED, '{"city": "Oslo"}', "get_weather", {"city": "Oslo"}),
        ([WEATHER, TIME], "required", '{"name":"get_time","arguments":{}}', "get_time", {}),
        (
            [WEATHER, TIME],
            "required",
            '{"name":"get_weather","arguments":{"city":"x"}}',
            "get_weather",
            {"city": "x"},
        ),
    ],
)
def test_the_constrained_answer_is_the_call(
    tools: list[Any], choice: Any, text: str, name: str, arguments: dict[str, Any]
) -> None:
    forced = forced_call(call_of(tools=tools, tool_choice=choice))
    assert forced is not None
    reply = as_forced_reply(_reply(text), forced)
    assert reply.text == ""
    assert reply.finish_reason == "tool_calls"
    assert reply.usage.prompt_tokens == 3
    assert reply.tool_calls is not None
    (call,) = reply.tool_calls
    assert call.function.name == name
    assert json.loads(call.function.arguments) == arguments
    assert call.id.startswith("call_")
    assert as_forced_reply(_reply(text), forced).tool_calls == reply.tool_calls  # stable id


@pytest.mark.parametrize(
    ("tools", "choice", "text", "finish", "code"),
    [
        ([WEATHER], NAMED, '{"city": "Os', "length", ErrorCode.BAD_REQUEST),
        ([WEATHER], NAMED, "not json", "stop", ErrorCode.BACKEND_ERROR),
        ([WEATHER], NAMED, "[1, 2]", "stop", ErrorCode.BACKEND_ERROR),
        (
            [WEATHER, TIME],
            "required",
            '{"name":"nope","arguments":{}}',
            "stop",
            ErrorCode.BACKEND_ERROR,
        ),
        ([WEATHER, TIME], "required", '{"city":"x"}', "stop", ErrorCode.BACKEND_ERROR),
    ],
)
def test_an_answer_that_is_not_the_call_is_an_error_saying_why(
    tools: list[Any], choice: Any, text: str, finish: str, code: ErrorCode
) -> None:
    forced = forced_call(call_of(tools=tools, tool_choice=choice))
    assert forced is not None
    with pytest.raises(InferbusError) as caught:
        as_forced_reply(_reply(text, finish), forced)
    assert caught.value.code == code


async def _events(*events: StreamEvent) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


async def test_a_constrained_stream_becomes_one_whole_call_before_its_end() -> None:
    forced = forced_call(call_of(tools=[WEATHER], tool_choice=NAMED))
    assert forced is not None
    events = _events(
        StreamDelta('{"city":'),
        StreamDelta(' "Oslo"}'),
        StreamEnd("stop", Usage(prompt_tokens=3, completion_tokens=4)),
    )
    out = [event async for event in as_forced_stream(events, forced)]
    assert [type(event) for event in out] == [StreamDelta, StreamEnd]
    first, end = out
    assert isinstance(first, StreamDelta)
    assert first.text == ""
    assembler = ToolCallAssembler()
    assembler.add(first.tool_calls or [])
    (call,) = assembler.calls()
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Oslo"},
    )
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "tool_calls"
    assert end.usage.completion_tokens == 4
