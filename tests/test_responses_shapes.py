"""OpenAI's Responses shapes, pure: a request as job fields (or the refusal naming the
field), and a job's answer as a response object or its event stream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.attempts.route import Route
from router.http.responses_answer import ResponsesEvents, response_error_code, whole_response
from router.http.responses_request import responses_job_fields
from services.errors import ErrorCode, InferbusError
from services.wire import ErrorInfo, JobRequest, JobResponse, Result, Usage
from services.wire_features import FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta

FUNCTION: dict[str, Any] = {"type": "function", "name": "f", "parameters": {"type": "object"}}


def fields_of(**body: Any) -> dict[str, Any]:
    fields = responses_job_fields({"model": "m", **body})
    assert isinstance(fields, dict), fields
    JobRequest.model_validate(fields)
    return fields


def test_a_conversation_of_items() -> None:
    fields = fields_of(
        instructions="be brief",
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "two"}],
            },
            {
                "type": "message",
                "role": "developer",
                "content": [
                    {"type": "input_text", "text": "now "},
                    {"type": "input_image", "image_url": "data:image/png;base64,QQ=="},
                ],
            },
        ],
        tools=[FUNCTION],
        tool_choice={"type": "function", "name": "f"},
        max_output_tokens=20,
        temperature=0.1,
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    )
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
    ]
    assert fields["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {"role": "system", "content": "now ", "images": ["data:image/png;base64,QQ=="]},
    ]
    assert fields["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert fields["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert fields["params"] == {"max_tokens": 20, "temperature": 0.1}
    assert fields["parallel_tool_calls"] is False
    assert fields["response_format"]["json_schema"] == {"name": "x", "schema": {"type": "object"}}


def deep(levels: int) -> dict[str, Any]:
    """An object schema nested `levels` times."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}}
    return schema


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "store": True}, "store"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": []}, "input"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "item_reference", "id": "m"}]}, "input[0].type"),
        ({"input": [{"type": "web_search_call", "id": "w"}]}, "input[0].type"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "x", "instructions": ["x"]}, "instructions"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": [1]}]}]},
            "input[0].content[0].text",
        ),
        (
            {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": deep(130)}]},
            "tools[0].parameters",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": deep(130)}}},
            "text.format.schema",
        ),
    ],
)
def test_refusals_name_the_field(body: dict[str, Any], field: str) -> None:
    refused = responses_job_fields({"model": "m", **body})
    assert isinstance(refused, InferbusError)
    assert refused.code == ErrorCode.BAD_REQUEST
    assert refused.message.startswith(field)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (ErrorCode.BUSY, "rate_limit_exceeded"),
        (ErrorCode.BAD_REQUEST, "invalid_prompt"),
        (ErrorCode.CONTEXT_EXCEEDED, "invalid_prompt"),
        (ErrorCode.BACKEND_ERROR, "server_error"),
        (ErrorCode.DEADLINE_EXCEEDED, "server_error"),
    ],
)
def test_a_failed_response_says_openais_error_code(code: ErrorCode, expected: str) -> None:
    assert response_error_code(code) == expected


CALL = ToolCall(id="call_1", function=FunctionCall(name="f", arguments='{"a":1}'))


def answer(
    text: str = "", calls: list[ToolCall] | None = None, finish: str = "stop"
) -> JobResponse:
    usage = Usage(prompt_tokens=3, completion_tokens=5)
    result = Result(text=text, finish_reason=finish, usage=usage, tool_calls=calls)
    return JobResponse(job_id="j1", status="ok", model="m", result=result)


@pytest.mark.parametrize(("finish", "status"), [("stop", "completed"), ("length", "incomplete")])
def test_a_whole_response(finish: str, status: str) -> None:
    body = whole_response(answer("hi", [CALL], finish), Route(), {"model": "asked", "tools": []})
    assert body["id"] == "resp_j1"
    assert body["status"] == status
    assert [item["type"] for item in body["output"]] == ["message", "function_call"]
    assert body["output"][0]["content"][0]["text"] == "hi"
    assert body["output"][1]["call_id"] == "call_1"
    assert body["usage"]["total_tokens"] == 8


def events_of(data: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(block.split("\n")[1].removeprefix("data: "))
        for block in data.decode().strip().split("\n\n")
    ]


def test_a_stream_of_text_then_a_split_call() -> None:
    form = ResponsesEvents("j1", "m", {"model": "m"})
    opening = ToolCallDelta(
        index=0, id="call_1", type="function", function=FunctionCallDelta(name="f")
    )
    data = form.delta("h") + form.delta("i") + form.delta([opening])
    data += form.delta([ToolCallDelta(index=0, function=FunctionCallDelta(arguments='{"a"'))])
    data += form.delta([ToolCallDelta(index=0, function=FunctionCallDelta(arguments=":1}"))])
    data += form.final(answer("hi", [CALL], "tool_calls"), Route())
    events = events_of(data)
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    completed = events[-1]["response"]
    assert completed["output"][0]["content"][0]["text"] == "hi"
    assert completed["output"][1]["arguments"] == '{"a":1}'
    assert [event.get("output_index") for event in events[9:14]] == [1] * 5


def test_a_replay_streams_its_whole_answer() -> None:
    form = ResponsesEvents("j1", "m", {"model": "m"})
    events = events_of(form.final(answer("", [CALL], "tool_calls"), Route()))
    types = [event["type"] for event in events]
    assert types[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_a_stream_broken_after_its_first_piece_fails_the_response() -> None:
    form = ResponsesEvents("j1", "m", {"model": "m"})
    data = form.delta("partial")
    error = ErrorInfo(code=ErrorCode.BACKEND_UNAVAILABLE, message="node lost")
    data += form.final(JobResponse(job_id="j1", status="error", error=error), Route())
    events = events_of(data)
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"]
    assert (events[-2]["code"], events[-2]["message"]) == ("BACKEND_UNAVAILABLE", "node lost")
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "node lost"}
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "partial"
