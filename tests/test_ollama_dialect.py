"""The Ollama dialect's pure translation, by tables: request bodies → job fields (and the
refusals, naming the field), answers and stream lines → Ollama's objects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.attempts.route import Route
from router.http.ollama_answers import (
    OllamaLines,
    chat_answer,
    created_at,
    done_reason,
    embed_answer,
    embeddings_answer,
    generate_answer,
    load_answer,
    metrics,
    ollama_message,
)
from router.http.ollama_requests import (
    chat_fields,
    embed_fields,
    embeddings_fields,
    generate_fields,
    is_load_request,
    load_fields,
    options_fields,
    served_name,
)
from services.errors import ErrorCode, InferbusError
from services.wire import ErrorInfo, JobRequest, JobResponse, Result, Timings, Usage
from services.wire_features import FunctionCall, ToolCall, ToolCallDelta, stable_call_id

USER = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("options", "params", "extra"),
    [
        (None, {}, {}),
        (
            {"temperature": 0.2, "top_p": 0.9, "seed": 7},
            {"temperature": 0.2, "top_p": 0.9, "seed": 7},
            {},
        ),
        ({"num_predict": 64, "stop": ["\n"]}, {"max_tokens": 64, "stop": ["\n"]}, {}),
        ({"num_predict": -1}, {}, {}),  # no limit
        ({"num_predict": -2}, {}, {}),  # fill the context
        (
            {"presence_penalty": 1.5, "frequency_penalty": 1.0},
            {"presence_penalty": 1.5, "frequency_penalty": 1.0},
            {},
        ),
        (
            {"top_k": 20, "min_p": 0.05, "num_ctx": 4096, "repeat_penalty": 1.1},
            {},
            {"top_k": 20, "min_p": 0.05, "num_ctx": 4096, "repeat_penalty": 1.1},
        ),
        (
            {"mirostat": 2, "mirostat_tau": 5.0, "typical_p": 0.7},
            {},
            {"mirostat": 2, "mirostat_tau": 5.0, "typical_p": 0.7},
        ),
        ({"num_gpu": 1, "num_thread": 8, "use_mmap": True, "numa": False}, {}, {}),  # the node's
        ({"no_such_option": 1, "temperature": None}, {}, {}),  # unknown ones dropped, as Ollama
    ],
)
def test_options_become_params_and_extras(
    options: Any, params: dict[str, Any], extra: dict[str, Any]
) -> None:
    assert options_fields(options) == (params, extra)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"model": "m", "messages": USER},
            {"model": "m", "stream": True, "params": {}, "messages": USER},
        ),
        ({"model": "m", "messages": USER, "stream": False}, {"stream": False}),
        ({"model": "m", "messages": USER, "stream": None}, {"stream": True}),
        (
            {"model": "m", "messages": USER, "format": "json"},
            {"response_format": {"type": "json_object"}},
        ),
        ({"model": "m", "messages": USER, "format": ""}, {}),
        (
            {"model": "m", "messages": USER, "format": SCHEMA},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": SCHEMA},
                }
            },
        ),
        (
            {"model": "m", "messages": USER, "keep_alive": "10m", "think": True},
            {"extra": {"keep_alive": "10m", "think": True}},
        ),
        ({"model": "m", "messages": USER, "keep_alive": 0}, {"extra": {"keep_alive": 0}}),
        ({"model": "m", "messages": USER, "think": "high"}, {"extra": {"think": "high"}}),
        (
            {"model": "m", "messages": USER, "logprobs": True, "top_logprobs": 3},
            {"params": {"logprobs": True, "top_logprobs": 3}},
        ),
        ({"model": "m", "messages": USER, "tools": [WEATHER]}, {"tools": [WEATHER]}),
        ({"model": "m", "messages": USER, "tools": []}, {}),
        (
            {"model": "m", "messages": USER, "options": {"num_predict": 5, "top_k": 3}},
            {"params": {"max_tokens": 5}, "extra": {"top_k": 3}},
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "what is this?", "images": ["aGk="]}],
            },
            {"messages": [{"role": "user", "content": "what is this?", "images": ["aGk="]}]},
        ),
        (
            {"model": "m", "messages": [{"role": "assistant"}]},
            {"messages": [{"role": "assistant", "content": ""}]},
        ),
    ],
)
def test_chat_bodies_become_job_fields(body: dict[str, Any], expected: dict[str, Any]) -> None:
    fields = chat_fields(body)
    assert not isinstance(fields, InferbusError)
    for key, value in expected.items():
        assert fields.get(key) == value, key
    assert isinstance(JobRequest.model_validate(fields), JobRequest)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": USER}, "model is required"),
        ({"model": "", "messages": USER}, "model is required"),
        ({"model": "m", "messages": USER, "stream": "yes"}, "stream:"),
        ({"model": "m", "messages": USER, "format": "xml"}, "format:"),
        ({"model": "m", "messages": USER, "format": 3}, "format:"),
        ({"model": "m", "messages": USER, "options": [1]}, "options:"),
        (
            {"model": "m", "messages": USER, "options": {"num_predict": "many"}},
            "options.num_predict:",
        ),
        ({"model": "m", "messages": USER, "think": "very"}, "think:"),
        ({"model": "m", "messages": "hi"}, "messages:"),
        ({"model": "m", "messages": ["hi"]}, "messages.0:"),
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages.0.role:"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages.0.content:"),
        ({"model": "m", "messages": [{"role": "user", "images": "aGk="}]}, "messages.0.images:"),
        (
            {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
            "messages.0.tool_calls.0:",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "[1"}}],
                    }
                ],
            },
            "messages.0.tool_calls.0:",
        ),
        ({"model": "m", "messages": USER, "tools": {"a": 1}}, "tools:"),
    ],
)
def test_chat_bodies_refused_name_the_field(body: dict[str, Any], field: str) -> None:
    refused = chat_fields(body)
    assert isinstance(refused, InferbusError)
    assert refused.code == ErrorCode.BAD_REQUEST
    assert refused.message.startswith(field)


def test_a_tool_loop_in_ollama_shape_becomes_a_well_formed_openai_conversation() -> None:
    arguments = {"city": "Paris"}
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": arguments}}],
            },
            {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
        ],
        "tools": [WEATHER],
    }
    fields = chat_fields(body)
    assert not isinstance(fields, InferbusError)
    job = JobRequest.model_validate(fields)
    assert job.messages is not None
    call_id = stable_call_id(0, "get_weather", '{"city":"Paris"}')
    (call,) = job.messages[1].tool_calls or []
    assert call.id == call_id
    assert call.function.arguments == '{"city":"Paris"}'
    assert job.messages[2].tool_call_id == call_id
    assert job.messages[2].name == "get_weather"


def test_a_tool_answer_naming_its_call_keeps_that_id() -> None:
    body = {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": {}}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
    }
    fields = chat_fields(body)
    assert not isinstance(fields, InferbusError)
    assert fields["messages"][0]["tool_calls"][0]["id"] == "call_1"
    assert fields["messages"][1]["tool_call_id"] == "call_1"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "m", "prompt": "hi"}, {"messages": USER, "stream": True}),
        (
            {"model": "m", "prompt": "hi", "system": "be brief"},
            {"messages": [{"role": "system", "content": "be brief"}, *USER]},
        ),
        (
            {"model": "m", "prompt": "what?", "images": ["aGk="]},
            {"messages": [{"role": "user", "content": "what?", "images": ["aGk="]}]},
        ),
        (
            {"model": "m", "prompt": "[INST] hi [/INST]", "raw": True},
            {"prompt": "[INST] hi [/INST]", "raw": True},
        ),
        (
            {"model": "m", "prompt": "def f(", "suffix": "return x"},
            {"prompt": "def f(", "suffix": "return x", "raw": False},
        ),
        (
            {"model": "m", "prompt": "hi", "format": "json", "stream": False},
            {"response_format": {"type": "json_object"}, "stream": False},
        ),
        (  # a template of its own: to a node whose Ollama applies it
            {"model": "m", "prompt": "hi", "system": "be brief", "template": "{{ .Prompt }}"},
            {
                "messages": [{"role": "system", "content": "be brief"}, *USER],
                "extra": {"template": "{{ .Prompt }}"},
            },
        ),
        (  # raw: no template at all, as Ollama ignores it then
            {"model": "m", "prompt": "[INST] hi", "raw": True, "template": "{{ .Prompt }}"},
            {"prompt": "[INST] hi", "raw": True, "extra": None},
        ),
    ],
)
def test_generate_bodies_become_job_fields(body: dict[str, Any], expected: dict[str, Any]) -> None:
    fields = generate_fields(body)
    assert not isinstance(fields, InferbusError)
    for key, value in expected.items():
        assert fields.get(key) == value, key
    assert isinstance(JobRequest.model_validate(fields), JobRequest)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m", "prompt": 3}, "prompt:"),
        ({"model": "m", "prompt": "hi", "template": ["{{ .Prompt }}"]}, "template:"),
        ({"model": "m", "prompt": "f(", "suffix": ")", "template": "{{ .Prompt }}"}, "template:"),
        ({"model": "m", "prompt": "hi", "context": [1, 2, 3]}, "context:"),
        ({"model": "m", "prompt": "hi", "raw": True, "system": "x"}, "raw:"),
        ({"model": "m", "prompt": "hi", "suffix": 3}, "suffix:"),
        ({"prompt": "hi"}, "model is required"),
    ],
)
def test_generate_bodies_refused_name_the_field(body: dict[str, Any], field: str) -> None:
    refused = generate_fields(body)
    assert isinstance(refused, InferbusError)
    assert refused.message.startswith(field)


@pytest.mark.parametrize(
    ("endpoint", "body", "load"),
    [
        ("chat", {"model": "m"}, True),
        ("chat", {"model": "m", "messages": []}, True),
        ("chat", {"model": "m", "messages": USER}, False),
        ("generate", {"model": "m"}, True),
        ("generate", {"model": "m", "prompt": "", "keep_alive": 0}, True),
        ("generate", {"model": "m", "prompt": "hi"}, False),
        ("generate", {"model": "m", "images": ["aGk="]}, False),
    ],
)
def test_no_input_is_a_load_request(endpoint: str, body: dict[str, Any], load: bool) -> None:
    assert is_load_request(endpoint, body) is load


def test_a_load_is_a_one_token_job_carrying_keep_alive() -> None:
    fields = load_fields({"model": "m", "keep_alive": 0})
    assert fields == {
        "model": "m",
        "prompt": "",
        "params": {"max_tokens": 1},
        "stream": False,
        "extra": {"keep_alive": 0},
    }
    assert isinstance(JobRequest.model_validate(fields), JobRequest)
    assert isinstance(load_fields({}), InferbusError)


@pytest.mark.parametrize(
    ("make", "body", "expected"),
    [
        (embed_fields, {"model": "e", "input": "a"}, {"type": "embed", "input": ["a"]}),
        (
            embed_fields,
            {"model": "e", "input": ["a", "b"], "dimensions": 4},
            {"input": ["a", "b"], "params": {"dimensions": 4}},
        ),
        (
            embed_fields,
            {"model": "e", "input": "a", "truncate": False, "keep_alive": "1m"},
            {"extra": {"truncate": False, "keep_alive": "1m"}},
        ),
        (
            embed_fields,
            {"model": "e", "input": "a", "options": {"num_ctx": 512}},
            {"extra": {"num_ctx": 512}},
        ),
        (embeddings_fields, {"model": "e", "prompt": "a"}, {"type": "embed", "input": ["a"]}),
    ],
)
def test_embed_bodies_become_embed_jobs(
    make: Any, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    fields = make(body)
    assert not isinstance(fields, InferbusError)
    for key, value in expected.items():
        assert fields.get(key) == value, key


@pytest.mark.parametrize(
    ("make", "body", "field"),
    [
        (embed_fields, {"model": "e", "input": 3}, "input:"),
        (embed_fields, {"model": "e", "input": ["a", 1]}, "input:"),
        (embeddings_fields, {"model": "e", "prompt": ["a"]}, "prompt:"),
        (embed_fields, {"input": "a"}, "model is required"),
        (embed_fields, {"model": "e", "input": ""}, "input: nothing to embed"),
        (embed_fields, {"model": "e", "input": []}, "input: nothing to embed"),
        (embeddings_fields, {"model": "e", "prompt": ""}, "prompt:"),
    ],
)
def test_embed_bodies_refused_name_the_field(make: Any, body: dict[str, Any], field: str) -> None:
    refused = make(body)
    assert isinstance(refused, InferbusError)
    assert refused.message.startswith(field)


SERVED = {"llama3.2:latest", "tiny", "hf.co/org/model:Q4_K_M", "qwen3:8b"}


@pytest.mark.parametrize(
    ("asked", "name"),
    [
        ("qwen3:8b", "qwen3:8b"),
        ("llama3.2", "llama3.2:latest"),  # no tag means :latest, as in Ollama
        ("tiny:latest", "tiny"),  # a llama.cpp or vLLM name has no tag
        ("tiny", "tiny"),
        ("qwen3", "qwen3"),  # no :latest served: left for the router to refuse
        ("hf.co/org/model:Q4_K_M", "hf.co/org/model:Q4_K_M"),
        ("nope:1b", "nope:1b"),
    ],
)
def test_names_follow_ollamas_latest_rule(asked: str, name: str) -> None:
    assert served_name(asked, SERVED.__contains__) == name


# --- answers ---------------------------------------------------------------------------

NOW = 1_700_000_000.25
ROUTE = Route(via="remote", node="gpu-a", model="m")
CALL = ToolCall(
    id="call_x", function=FunctionCall(name="get_weather", arguments='{"city":"Paris"}')
)


def answer(
    text: str = "hello",
    finish: str | None = "stop",
    calls: list[ToolCall] | None = None,
    timings: Timings | None = None,
    usage: Usage | None = None,
) -> JobResponse:
    return JobResponse(
        job_id="j",
        status="ok",
        model="m",
        result=Result(text=text, finish_reason=finish, usage=usage or Usage(), tool_calls=calls),
        timings=timings or Timings(),
    )


def test_created_at_is_rfc3339_utc_as_go_marshals_it() -> None:
    assert created_at(NOW) == "2023-11-14T22:13:20.250000Z"


@pytest.mark.parametrize(
    ("timings", "usage", "expected"),
    [
        (Timings(), Usage(), {}),
        (
            Timings(total_ms=12.5, load_ms=1.0, prompt_ms=2.25, eval_ms=9.0),
            Usage(prompt_tokens=26, completion_tokens=7),
            {
                "total_duration": 12_500_000,
                "load_duration": 1_000_000,
                "prompt_eval_count": 26,
                "prompt_eval_duration": 2_250_000,
                "eval_count": 7,
                "eval_duration": 9_000_000,
            },
        ),
        # an older worker: totals only, the split left out (Go's omitempty)
        (
            Timings(total_ms=3.0, backend_ms=2.0),
            Usage(completion_tokens=2),
            {"total_duration": 3_000_000, "eval_count": 2},
        ),
    ],
)
def test_metrics_are_nanoseconds_of_the_nodes_timings_zero_ones_omitted(
    timings: Timings, usage: Usage, expected: dict[str, int]
) -> None:
    assert metrics(answer(timings=timings, usage=usage)) == expected


@pytest.mark.parametrize(
    ("finish", "reason"),
    [("stop", "stop"), ("length", "length"), ("tool_calls", "stop"), (None, "stop")],
)
def test_done_reason_is_ollamas(finish: str | None, reason: str) -> None:
    assert done_reason(answer(finish=finish)) == reason


def test_a_whole_chat_answer_with_tool_calls() -> None:
    body = chat_answer(answer(text="", finish="tool_calls", calls=[CALL]), ROUTE, "m", NOW)
    assert body["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_x",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    }
    assert body["done"] is True
    assert body["done_reason"] == "stop"
    assert body["created_at"] == created_at(NOW)
    assert body["route"]["node"] == "gpu-a"


def test_a_whole_generate_answer() -> None:
    body = generate_answer(answer(text="blue", finish="length"), ROUTE, "m", NOW)
    assert (body["response"], body["done"], body["done_reason"]) == ("blue", True, "length")
    assert "message" not in body


def test_load_answers_say_load_or_unload() -> None:
    loaded = load_answer("generate", "m", unload=False, now_unix=NOW)
    unloaded = load_answer("chat", "m", unload=True, now_unix=NOW)
    assert (loaded["response"], loaded["done_reason"]) == ("", "load")
    assert (unloaded["message"]["content"], unloaded["done_reason"]) == ("", "unload")


def test_embed_answers() -> None:
    vectors = [[0.1, 0.2], [0.3, 0.4]]
    response = JobResponse(
        job_id="j",
        status="ok",
        model="e",
        result=Result(embeddings=vectors, usage=Usage(prompt_tokens=2)),
        timings=Timings(total_ms=1.5, load_ms=0.5),
    )
    assert embed_answer(response, "e") == {
        "model": "e",
        "embeddings": vectors,
        "total_duration": 1_500_000,
        "load_duration": 500_000,
        "prompt_eval_count": 2,
    }
    assert embeddings_answer(response) == {"embedding": [0.1, 0.2]}


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


def test_a_chat_stream_is_pieces_then_calls_whole_then_the_final_object() -> None:
    lines = OllamaLines("chat", "asked", lambda: NOW)
    lines.use_model("m")
    out = lines.delta("hel") + lines.delta("lo")
    # an OpenAI-compatible runtime streams a call in pieces: Ollama clients get it whole
    out += lines.delta(
        [
            ToolCallDelta.model_validate(
                {
                    "index": 0,
                    "id": "call_x",
                    "function": {"name": "get_weather", "arguments": '{"ci'},
                }
            )
        ]
    )
    out += lines.delta(
        [ToolCallDelta.model_validate({"index": 0, "function": {"arguments": 'ty":"Paris"}'}})]
    )
    final = answer(text="hello", finish="tool_calls", calls=[CALL], timings=Timings(total_ms=2.0))
    out += lines.final(final, ROUTE)
    parsed = lines_of(out)
    assert [line["message"]["content"] for line in parsed] == ["hel", "lo", "", ""]
    assert [line["done"] for line in parsed] == [False, False, False, True]
    assert parsed[2]["message"]["tool_calls"] == [
        {
            "id": "call_x",
            "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
        }
    ]
    assert parsed[3]["done_reason"] == "stop"
    assert parsed[3]["total_duration"] == 2_000_000
    assert {line["model"] for line in parsed} == {"m"}


def test_a_generate_stream_carries_response_pieces() -> None:
    lines = OllamaLines("generate", "m", lambda: NOW)
    parsed = lines_of(lines.delta("a") + lines.final(answer(text="a"), ROUTE))
    assert [line["response"] for line in parsed] == ["a", ""]
    assert "message" not in parsed[0]


def test_a_stream_that_got_the_answer_whole_still_delivers_its_text() -> None:
    lines = OllamaLines("chat", "m", lambda: NOW)
    parsed = lines_of(lines.delta("") + lines.final(answer(text="whole"), ROUTE))
    assert "".join(line["message"]["content"] for line in parsed) == "whole"
    assert parsed[-1]["done"] is True


def test_an_error_after_the_first_piece_is_one_more_error_line() -> None:
    lines = OllamaLines("chat", "m", lambda: NOW)
    failed = JobResponse(
        job_id="j",
        status="error",
        error=ErrorInfo(code=ErrorCode.BACKEND_UNAVAILABLE, message="node lost"),
    )
    parsed = lines_of(lines.delta("a") + lines.final(failed, ROUTE))
    assert parsed[-1] == {"error": "node lost"}


@pytest.mark.parametrize(
    ("code", "message", "said"),
    [
        (ErrorCode.MODEL_NOT_FOUND, "nothing serves x:1b", "model not found: nothing serves x:1b"),
        (ErrorCode.MODEL_NOT_FOUND, "model 'x' not found", "model 'x' not found"),
        (
            ErrorCode.BAD_REQUEST,
            "extra.think: model 'm' does not support thinking",
            "think: model 'm' does not support thinking",
        ),
        (
            ErrorCode.BAD_REQUEST,
            "extra.template: only an Ollama runtime applies a request's own template",
            "template: only an Ollama runtime applies a request's own template",
        ),
        (ErrorCode.BAD_REQUEST, "extra.top_k: bad", "extra.top_k: bad"),  # options: our name
        (ErrorCode.BAD_REQUEST, "messages.0.role: is required", "messages.0.role: is required"),
    ],
)
def test_error_messages_name_fields_as_ollamas_body_has_them(
    code: ErrorCode, message: str, said: str
) -> None:
    assert ollama_message(code, message) == said
