"""Contract tables for the OpenAI features: each field's parse, its translation to each
runtime's wire format and back, and the honour-or-refuse rules. Pure: no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node_worker.model_capabilities import model_capabilities
from services.errors import InferbusError
from services.needs import needed_capabilities, refusal
from services.runtimes import ollama, openai_compat
from services.runtimes.base import ChatCall, EmbedCall, ModelInfo
from services.runtimes.ollama_features import tool_calls_of as ollama_tool_calls
from services.runtimes.openai_features import capabilities_from_props, vectors_of
from services.wire import JobRequest, JobResponse, decode_request, encode
from services.wire_features import ToolCallAssembler, ToolCallDelta, stable_call_id

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def job(**fields: Any) -> JobRequest:
    decoded = decode_request(json.dumps({"prompt": "hi", **fields}).encode(), default_type="llm")
    assert isinstance(decoded, JobRequest), decoded
    return decoded


def refused(data: dict[str, Any]) -> str:
    decoded = decode_request(json.dumps(data).encode(), default_type="llm")
    assert isinstance(decoded, JobResponse)
    assert decoded.error is not None
    assert decoded.error.code == "BAD_REQUEST"
    return decoded.error.message


# -- parse -------------------------------------------------------------------------------


def test_openai_fields_parse_into_the_job() -> None:
    request = job(
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}},
        max_completion_tokens=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=3,
        user="u-1",
        extra={"top_k": 40},
    )
    assert request.tools is not None
    assert request.tools[0].function.name == "get_weather"
    assert request.parallel_tool_calls is False
    assert request.response_format is not None
    assert request.response_format.schema_ == SCHEMA
    assert request.params.max_tokens == 7  # OpenAI's newer name is the cap
    assert (request.params.logprobs, request.params.top_logprobs) == (True, 3)
    assert request.params.user == "u-1"
    assert request.extra == {"top_k": 40}


@pytest.mark.parametrize(
    ("fields", "cap"),
    [
        ({"max_tokens": 9}, 9),
        ({"max_completion_tokens": 5}, 5),
        ({"max_tokens": 4, "max_completion_tokens": 6}, 4),
    ],
)
def test_the_smaller_token_cap_wins(fields: dict[str, Any], cap: int) -> None:
    assert job(**fields).params.max_tokens == cap


def test_messages_carry_tool_calls_and_tool_results() -> None:
    request = JobRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ]
        }
    )
    assert request.messages is not None
    assistant, tool = request.messages[1], request.messages[2]
    assert assistant.tool_calls is not None
    assert assistant.tool_calls[0].arguments_object() == {"city": "Oslo"}
    assert tool.tool_call_id == "call_1"


def test_a_json_schema_keeps_its_openai_key_on_the_bus() -> None:
    request = job(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    )
    sent = json.loads(encode(request))
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA
    assert JobRequest.model_validate(sent).fingerprint() == request.fingerprint()


def test_an_embed_job_takes_a_string_or_a_list() -> None:
    assert JobRequest.model_validate({"input": "one"}).embed_inputs() == ["one"]
    assert JobRequest.model_validate({"input": ["a", "b"]}).embed_inputs() == ["a", "b"]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"prompt": "x", "tools": [{"type": "function", "function": {}}]}, "tools.0.function.name"),
        ({"prompt": "x", "top_logprobs": 2}, "top_logprobs needs logprobs"),
        ({"prompt": "x", "response_format": {"type": "yaml"}}, "response_format.type"),
        ({"prompt": "x", "presence_penalty": 3}, "params.presence_penalty"),
        ({"prompt": "x", "n": 0}, "params.n"),
        ({"prompt": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": 5}, "input"),
    ],
)
def test_malformed_features_are_bad_requests_naming_the_field(
    data: dict[str, Any], where: str
) -> None:
    assert where in refused(data)


def test_a_hand_typed_job_still_parses_as_before() -> None:
    request = job()
    assert request.tools is None
    assert request.response_format is None
    assert request.extra == {}
    assert json.loads(encode(request)).keys() == {
        "job_id",
        "type",
        "prompt",
        "images",
        "params",
        "extra",
        "raw",
        "stream",
    }


# -- refusal rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "job_type", "capabilities", "reason"),
    [
        (
            {"tools": [TOOL]},
            "llm",
            ("completion",),
            "tools: model 'm' on node n does not support tools",
        ),
        ({"tools": [TOOL], "tool_choice": "none"}, "llm", ("completion",), None),
        ({"tools": [TOOL]}, "llm", ("completion", "tools"), None),
        ({"tools": [TOOL]}, "llm", (), None),  # an older record: capabilities unknown
        (
            {"images": ["aGk="]},
            "vision",
            ("completion",),
            "images: model 'm' on node n does not support vision",
        ),
        ({}, "llm", ("embedding",), "prompt: model 'm' on node n does not support completion"),
        (
            {"input": "x"},
            "embed",
            ("completion",),
            "input: model 'm' on node n does not support embedding",
        ),
        ({"input": "x"}, "embed", ("embedding",), None),
        ({"n": 2}, "llm", ("completion",), "params.n: "),
        ({"n": 1}, "llm", ("completion",), None),
        (
            {"tool_choice": "required"},
            "llm",
            ("completion", "tools"),
            "tool_choice: there are no `tools`",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "llm",
            ("completion", "tools"),
            "tool_choice: function 'other' is not in `tools`",
        ),
        (
            {"input": "x", "stream": True},
            "embed",
            ("embedding",),
            "stream: embeddings are not streamed",
        ),
        (
            {"input": "x", "tools": [TOOL]},
            "embed",
            ("embedding",),
            "tools: an embed job answers vectors",
        ),
        ({"input": "x"}, "llm", ("completion",), None),  # has a prompt too (job() adds it)
        ({"extra": {"template": "{{ .Prompt }}"}}, "llm", ("completion",), None),
        (
            {"extra": {"template": ["{{ .Prompt }}"]}},
            "llm",
            ("completion",),
            "extra.template: must be a string",
        ),
        (
            {
                "prompt": None,
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
                "extra": {"template": "{{ .Prompt }}"},
            },
            "llm",
            ("completion",),
            "extra.template: renders one prompt",
        ),
        (
            {"tools": [TOOL], "extra": {"template": "{{ .Prompt }}"}},
            "llm",
            ("completion", "tools"),
            "extra.template: takes no tools",
        ),
    ],
)
def test_refusal_names_the_field_and_the_reason(
    fields: dict[str, Any], job_type: str, capabilities: tuple[str, ...], reason: str | None
) -> None:
    request = job(**fields)
    error = refusal(request, job_type, model="m", capabilities=capabilities, node_id="n")  # type: ignore[arg-type]
    if reason is None:
        assert error is None
    else:
        assert error is not None
        assert error.code == "BAD_REQUEST"
        assert error.message.startswith(reason)


def test_an_llm_job_with_only_input_is_refused_whatever_the_model() -> None:
    request = JobRequest.model_validate({"input": "x"})
    error = refusal(request, "llm", model="m", capabilities=(), node_id="n")
    assert error is not None
    assert error.message.startswith("input: only embed jobs take `input`")


def test_needed_capabilities_are_what_the_router_filters_by() -> None:
    needs = needed_capabilities(job(tools=[TOOL], images=["aGk="]), "vision")
    assert [(n.capability, n.field) for n in needs] == [
        ("completion", "prompt"),
        ("tools", "tools"),
        ("vision", "images"),
    ]
    assert [n.capability for n in needed_capabilities(job(input="x"), "embed")] == ["embedding"]


# -- Ollama translation ------------------------------------------------------------------


def call_of(**fields: Any) -> ChatCall:
    return ChatCall.of("m", job(**fields))


def test_ollama_gets_tools_and_tool_calls_with_arguments_as_objects() -> None:
    request = JobRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": [TOOL],
        }
    )
    body = ollama.chat_body(ChatCall.of("m", request), stream=False)
    assert body["tools"] == [TOOL]
    assert body["messages"][1]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ]
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, {"format": "json"}),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}},
            {"format": SCHEMA},
        ),
        ({"response_format": {"type": "text"}}, {}),
        ({"logprobs": True, "top_logprobs": 2}, {"logprobs": True, "top_logprobs": 2}),
        ({"tools": [TOOL], "tool_choice": "none"}, {}),
        ({"extra": {"keep_alive": "5m"}}, {"keep_alive": "5m"}),
        ({"extra": {"guided_json": SCHEMA}}, {"format": SCHEMA}),
        ({"extra": {"chat_template_kwargs": {"enable_thinking": False}}}, {"think": False}),
        ({"extra": {"store": True, "metadata": {"a": "b"}}}, {}),
    ],
)
def test_ollama_request_fields(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = ollama.chat_body(call_of(**fields), stream=False)
    assert {
        k: v for k, v in body.items() if k not in ("model", "messages", "stream", "options")
    } == expected


def test_ollama_options_take_penalties_and_known_extras() -> None:
    body = ollama.chat_body(
        call_of(presence_penalty=1.0, extra={"top_k": 20, "repetition_penalty": 1.1}), stream=False
    )
    assert body["options"] == {"presence_penalty": 1.0, "top_k": 20, "repeat_penalty": 1.1}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"extra": {"best_of": 2}}, "extra.best_of"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            },
            "messages.0.tool_calls",
        ),
    ],
)
def test_ollama_refuses_what_it_cannot_honour(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InferbusError) as caught:
        ollama.chat_body(call_of(**fields), stream=False)
    assert caught.value.code == "BAD_REQUEST"
    assert caught.value.message.startswith(f"{field}: ")


def test_ollama_tool_calls_get_json_string_arguments_and_stable_ids() -> None:
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}},
            {"id": "given", "function": {"name": "get_time", "arguments": {}}},
        ],
    }
    first, second = ollama_tool_calls(message)
    assert first.function.arguments == '{"city":"Oslo"}'
    assert first.id == stable_call_id(0, "get_weather", '{"city":"Oslo"}')
    assert ollama_tool_calls(message)[0].id == first.id
    assert (second.id, second.function.arguments) == ("given", "{}")


def test_ollama_stream_line_with_a_tool_call_becomes_one_openai_delta() -> None:
    line = json.dumps(
        {
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
            },
            "done": False,
        }
    )
    delta, end = ollama._parse_line(line, (), calls_seen=2)
    assert end is None
    assert delta.tool_calls == [
        ToolCallDelta.model_validate(
            {
                "index": 2,
                "id": stable_call_id(2, "f", '{"x":1}'),
                "type": "function",
                "function": {"name": "f", "arguments": '{"x":1}'},
            }
        )
    ]


def test_ollama_embed_body_and_vectors() -> None:
    from services.runtimes.ollama_features import embed_body
    from services.runtimes.ollama_features import vectors_of as ollama_vectors

    assert embed_body(EmbedCall("e", ["a", "b"], dimensions=8)) == {
        "model": "e",
        "input": ["a", "b"],
        "dimensions": 8,
    }
    assert ollama_vectors({"embeddings": [[1, 2], [3, 4]]}) == [[1.0, 2.0], [3.0, 4.0]]


# -- OpenAI-compatible translation -------------------------------------------------------


def test_openai_compatible_runtimes_get_the_fields_unchanged() -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": SCHEMA, "strict": True},
    }
    body = openai_compat.chat_body(
        call_of(
            tools=[TOOL],
            tool_choice=choice,
            parallel_tool_calls=False,
            response_format=response_format,
            logprobs=True,
            top_logprobs=1,
            frequency_penalty=0.2,
            user="u",
            extra={"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}},
        ),
        stream=False,
    )
    assert body["tools"] == [TOOL]
    assert body["tool_choice"] == choice
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == response_format
    assert (body["logprobs"], body["top_logprobs"], body["frequency_penalty"], body["user"]) == (
        True,
        1,
        0.2,
        "u",
    )
    assert (body["top_k"], body["chat_template_kwargs"]) == (5, {"enable_thinking": False})


@pytest.mark.parametrize("key", ["model", "messages", "stream", "tools", "temperature", "user"])
def test_extra_cannot_set_what_the_job_sets_itself(key: str) -> None:
    assert f"extra.{key} is a field of the job itself" in refused(
        {"prompt": "x", "extra": {key: 1}}
    )


def test_an_adapter_never_lets_extra_replace_its_own_fields() -> None:
    from services.wire import Message

    direct = ChatCall("m", [Message(content="hi")], extra={"stream_options": {}})
    with pytest.raises(InferbusError) as caught:
        openai_compat.chat_body(direct, stream=True)
    assert caught.value.message.startswith("extra.stream_options: ")


def test_openai_assistant_tool_call_message_has_null_content() -> None:
    request = JobRequest.model_validate(
        {
            "messages": [
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            ]
        }
    )
    body = openai_compat.chat_body(ChatCall.of("m", request), stream=False)
    assert body["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "ok", "tool_call_id": "call_1"},
    ]


def test_sse_tool_call_deltas_assemble_into_whole_calls() -> None:
    reader = openai_compat._SseChunks(())
    pieces = [
        {
            "index": 0,
            "id": "call_a",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"x":'}},
        {
            "index": 1,
            "id": "call_b",
            "type": "function",
            "function": {"name": "g", "arguments": "{}"},
        },
        {"index": 0, "function": {"arguments": "1}"}},
    ]
    assembler = ToolCallAssembler()
    for piece in pieces:
        delta = reader.feed(
            "data: " + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})
        )
        assert delta is not None
        assert delta.tool_calls is not None
        assembler.add(delta.tool_calls)
    reader.feed(
        "data: "
        + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    )
    calls = assembler.calls()
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_a", "f", '{"x":1}'),
        ("call_b", "g", "{}"),
    ]
    assert reader.finish_reason == "tool_calls"


def test_openai_embeddings_come_back_in_input_order() -> None:
    data = {"data": [{"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": [0.25]}]}
    assert vectors_of(data) == [[0.25], [0.5]]
    with pytest.raises(InferbusError):
        vectors_of({"data": [{"index": 0, "embedding": "AAAA"}]})


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        (
            {"chat_template": "...", "chat_template_caps": {"supports_tools": True}},
            ("completion", "tools"),
        ),
        (
            {
                "chat_template": "...",
                "chat_template_caps": {"supports_tools": False},
                "modalities": {"vision": True},
            },
            ("completion", "vision"),
        ),
        ({"chat_template": "..."}, ("completion",)),
        ({"default_generation_settings": {}}, ()),
        ("not props", ()),
    ],
)
def test_llamacpp_props_say_what_the_model_can_do(props: Any, expected: tuple[str, ...]) -> None:
    assert capabilities_from_props(props) == expected


# -- capabilities per model --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "reported", "overrides", "expected"),
    [
        ("llama3.1:8b", "ollama", ("completion", "tools"), {}, ("completion", "tools")),
        ("llama3.1:8b", "ollama", (), {}, ()),  # an Ollama too old to say: unknown
        ("Qwen/Qwen3-8B", "vllm", (), {}, ("completion", "tools", "thinking")),
        ("meta-llama/Llama-3-8B", "vllm", (), {}, ("completion",)),
        ("BAAI/bge-m3", "vllm", (), {}, ("embedding",)),
        ("llava-1.6", "lmstudio", (), {}, ("completion", "vision")),
        ("tiny", "llamacpp", ("completion", "tools"), {}, ("completion", "tools")),
        ("tiny", "llamacpp", (), {"tiny": ["completion", "tools"]}, ("completion", "tools")),
        ("x", "vllm", ("completion",), {"default": ["embedding"]}, ("embedding",)),
    ],
)
def test_capabilities_come_from_override_then_runtime_then_name(
    name: str,
    kind: str,
    reported: tuple[str, ...],
    overrides: dict[str, list[str]],
    expected: tuple[str, ...],
) -> None:
    info = ModelInfo(name=name, capabilities=reported)
    assert model_capabilities(info, kind, overrides) == expected  # type: ignore[arg-type]


def test_a_raw_prompt_is_a_completion_request_for_each_runtime() -> None:
    raw = ChatCall.of("m", job(raw=True, max_tokens=3))
    fill_in = ChatCall.of("m", job(suffix="):"))
    assert openai_compat.completion_body(raw, stream=False) == {
        "model": "m",
        "prompt": "hi",
        "max_tokens": 3,
    }
    assert openai_compat.completion_body(fill_in, stream=True)["suffix"] == "):"
    assert ollama.generate_body(raw, stream=False) == {
        "model": "m",
        "prompt": "hi",
        "stream": False,
        "raw": True,
        "options": {"num_predict": 3},
    }
    assert ollama.generate_body(fill_in, stream=False)["suffix"] == "):"
    assert "raw" not in ollama.generate_body(fill_in, stream=False)  # the template places the gap
    assert ChatCall.of("m", job()).raw_prompt is None


def test_a_template_of_its_own_is_ollamas_generate_and_refused_elsewhere() -> None:
    template = "<|sys|>{{ .System }}<|user|>{{ .Prompt }}"
    call = ChatCall.of(
        "m",
        job(
            prompt=None,
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi", "images": ["aGk="]},
            ],
            extra={"template": template, "keep_alive": "5m", "top_k": 3},
            max_tokens=4,
        ),
    )
    assert ollama.templated_body(call, stream=True) == {
        "model": "m",
        "prompt": "hi",
        "system": "be brief",
        "images": ["aGk="],
        "stream": True,
        "template": template,
        "keep_alive": "5m",
        "options": {"num_predict": 4, "top_k": 3},
    }
    with pytest.raises(InferbusError) as caught:
        openai_compat.chat_body(call, stream=False)
    assert caught.value.message.startswith("extra.template: only an Ollama runtime")
    # no template: the model's own, on every runtime
    untemplated = ChatCall.of("m", job(extra={"template": ""}))
    assert "template" not in openai_compat.chat_body(untemplated, stream=False)


def test_an_answer_without_the_logprobs_asked_for_is_refused() -> None:
    from services.runtimes.base import ChatReply
    from services.runtimes.calls import honoured
    from services.wire import Usage

    asked = ChatCall.of("m", job(logprobs=True))
    bare = ChatReply("hi", "stop", Usage())
    with pytest.raises(InferbusError) as caught:
        honoured(asked, bare)
    assert caught.value.code == "BAD_REQUEST"
    assert caught.value.message.startswith("params.logprobs: ")
    assert honoured(ChatCall.of("m", job()), bare) is bare


def test_an_openai_body_keeps_every_field_its_own_or_under_extra() -> None:
    from services.wire import openai_job_fields

    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 5,
        "top_k": 40,
        "chat_template_kwargs": {"enable_thinking": False},
        "stream_options": {"include_usage": True},
        "encoding_format": "base64",
    }
    fields = openai_job_fields(body)
    request = JobRequest.model_validate(fields)
    assert request.params.max_tokens == 5
    assert request.extra == {"top_k": 40, "chat_template_kwargs": {"enable_thinking": False}}
    assert "stream_options" not in fields
    assert "encoding_format" not in fields
    assert openai_job_fields({"prompt": "x"}) == {"prompt": "x"}
