"""The simulator's tools, JSON modes, embeddings and completions, read by real clients: the
official `openai` client for the OpenAI API, plain HTTP for Ollama's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tools.simulator import (
    SimModel,
    Simulator,
    expected_embedding,
    expected_text,
    expected_thinking,
)
from tools.simulator.cli import parse_models

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"term": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["term"],
            },
        },
    }
]
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer", "minimum": 1900}},
    "required": ["title", "year"],
}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    models = [
        SimModel("m"),
        SimModel("no-tools", tools=False),
        SimModel("embedder", embedding=True, chat=False),
    ]
    async with Simulator(models=models, tokens=6) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0) as c:
        yield c


async def test_openai_client_reads_a_tool_call_and_its_stream(client: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "please lookup nats"}]
    answer = await client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "lookup"
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[0]["function"]["parameters"])

    pieces: dict[int, dict[str, str]] = {}
    finish = None
    stream = await client.chat.completions.create(
        model="m", messages=messages, tools=TOOLS, stream=True
    )
    async for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or ():
            entry = pieces.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            if delta.function is not None:
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert pieces == {0: {"id": call.id, "name": "lookup", "arguments": call.function.arguments}}


async def test_after_the_tool_result_the_model_answers_in_text(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "lookup x"}], tools=TOOLS
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages: Any = [
        {"role": "user", "content": "lookup x"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "found"},
    ]
    final = await client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == expected_text("m", "lookup x", 6)


async def test_openai_json_schema_answer_validates(client: openai.AsyncOpenAI) -> None:
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "f", "schema": SCHEMA}}
    answer = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a film"}], response_format=response_format
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)


async def test_a_model_without_tools_is_a_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="tool"):
        await client.chat.completions.create(
            model="no-tools", messages=[{"role": "user", "content": "lookup"}], tools=TOOLS
        )


async def test_openai_embeddings_and_legacy_completions(client: openai.AsyncOpenAI) -> None:
    embedded = await client.embeddings.create(
        model="embedder", input=["a", "b"], encoding_format="float"
    )
    assert [item.embedding for item in embedded.data] == [
        expected_embedding("embedder", "a"),
        expected_embedding("embedder", "b"),
    ]
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        await client.embeddings.create(model="m", input="a", encoding_format="float")
    completion = await client.completions.create(model="m", prompt="The sky is", max_tokens=3)
    assert completion.choices[0].text == expected_text("m", "The sky is", 3)
    assert completion.choices[0].finish_reason == "length"


async def test_ollama_shapes_for_tools_format_and_embed(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        show = (await http.post("/api/show", json={"model": "m"})).json()
        called = await http.post(
            "/api/chat",
            json={
                "model": "m",
                "stream": False,
                "messages": [{"role": "user", "content": "lookup it"}],
                "tools": TOOLS,
            },
        )
        shaped = await http.post(
            "/api/chat",
            json={"model": "m", "stream": False, "format": SCHEMA, "messages": [{"content": "x"}]},
        )
        refused = await http.post(
            "/api/chat",
            json={
                "model": "no-tools",
                "messages": [{"role": "user", "content": "x"}],
                "tools": TOOLS,
            },
        )
        embedded = await http.post("/api/embed", json={"model": "embedder", "input": "hello"})
    assert show["capabilities"] == ["completion", "tools"]
    body = called.json()
    assert body["done_reason"] == "stop"
    (call,) = body["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert isinstance(call["function"]["arguments"], dict)  # an object, not a string
    jsonschema.validate(json.loads(shaped.json()["message"]["content"]), SCHEMA)
    assert refused.status_code == 400
    assert "does not support tools" in refused.json()["error"]
    assert embedded.json()["embeddings"] == [expected_embedding("embedder", "hello")]
    assert embedded.json()["prompt_eval_count"] == 1


def test_model_name_suffixes_switch_abilities() -> None:
    models = parse_models("a, e:embed, c:notools")
    assert [(m.name, m.chat, m.embedding, m.tools) for m in models] == [
        ("a", True, False, True),
        ("e", False, True, True),
        ("c", True, False, False),
    ]


THINKER = SimModel("qwen3:4b", thinking=True)


@pytest.mark.parametrize(
    ("path", "body", "reasoning"),
    [
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "why"}], "think": True},
            lambda b: b["message"]["thinking"],
        ),
        ("/api/generate", {"prompt": "why", "think": "high"}, lambda b: b["thinking"]),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "why"}],
                "chat_template_kwargs": {"enable_thinking": True},
            },
            lambda b: b["choices"][0]["message"]["reasoning_content"],
        ),
    ],
    ids=["ollama-chat", "ollama-generate", "openai-chat"],
)
async def test_a_thinking_model_asked_to_think_reasons_first_in_each_wire_format(
    path: str, body: dict[str, Any], reasoning: Any
) -> None:
    async with Simulator(models=[THINKER], tokens=5) as sim, httpx.AsyncClient() as http:
        whole = (
            await http.post(sim.url + path, json={**body, "model": THINKER.name, "stream": False})
        ).json()
        assert reasoning(whole) == expected_thinking(THINKER.name, "why")
        async with http.stream(
            "POST", sim.url + path, json={**body, "model": THINKER.name, "stream": True}
        ) as response:
            lines = [line async for line in response.aiter_lines() if line.strip()]
        unasked = {
            key: value
            for key, value in body.items()
            if key not in ("think", "chat_template_kwargs")
        }
        plain = (
            await http.post(
                sim.url + path, json={**unasked, "model": THINKER.name, "stream": False}
            )
        ).json()
    streamed = "".join(
        _reasoning_piece(json.loads(line.removeprefix("data: ")))
        for line in lines
        if line != "data: [DONE]"
    )
    assert streamed == expected_thinking(THINKER.name, "why")
    assert "thinking" not in json.dumps(plain)
    assert "reasoning" not in json.dumps(plain)


def _reasoning_piece(event: dict[str, Any]) -> str:
    if "choices" in event:
        deltas = [choice.get("delta", {}) for choice in event["choices"]]
        return "".join(delta.get("reasoning_content") or "" for delta in deltas)
    return str((event.get("message") or {}).get("thinking") or event.get("thinking") or "")


def test_the_think_suffix_makes_a_thinking_model() -> None:
    (model,) = parse_models("qwen3:4b:think")
    assert model == SimModel("qwen3:4b", thinking=True)
