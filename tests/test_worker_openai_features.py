"""OpenAI features through the worker over real NATS, in front of the simulator speaking
Ollama's and OpenAI's wire formats: the tool-call loop, streamed tool-call deltas, JSON
modes, logprobs, embeddings, capabilities in the record, and refusals."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
from nats.aio.client import Client as NatsClient

from services.nats_server import NatsServer
from services.wire_features import ToolCallAssembler
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, stream
from tools.simulator import SimModel, Simulator, expected_embedding, expected_text

TOOL_MODEL = "qwen3:8b"
PLAIN_MODEL = "plain:7b"
EMBED_MODEL = "nomic-embed-text"
MODELS = (
    SimModel(TOOL_MODEL, family="qwen3"),
    SimModel(PLAIN_MODEL, tools=False),
    SimModel(EMBED_MODEL, family="nomic-bert", embedding=True, chat=False),
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days"],
        },
    },
}
ASK_WEATHER = "what is the weather in Paris? call get_weather"
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "admin": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "admin"],
    "additionalProperties": False,
}
KINDS = pytest.mark.parametrize("kind", ["ollama", "vllm"])


def embed(node_id: str) -> str:
    return f"node.{node_id}.embed.request"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=list(MODELS), tokens=8) as simulator:
        yield simulator


def tool_job(**more: Any) -> dict[str, Any]:
    return {
        "model": TOOL_MODEL,
        "messages": [{"role": "user", "content": ASK_WEATHER}],
        "tools": [WEATHER_TOOL],
        **more,
    }


@KINDS
async def test_tool_call_loop_ends_in_a_text_answer(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, kind: str
) -> None:
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        first = await ask(nc, llm(node_id), tool_job())
        again = await ask(nc, llm(node_id), tool_job())
        assert first.result is not None, first.error
        assert first.result.finish_reason == "tool_calls"
        assert first.result.tool_calls is not None
        (call,) = first.result.tool_calls
        assert call.function.name == "get_weather"
        assert call.id.startswith("call_")
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])  # type: ignore[index]
        assert again.result is not None
        assert again.result.tool_calls == first.result.tool_calls

        tool_result = {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}
        assistant = {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}
        final = await ask(
            nc,
            llm(node_id),
            tool_job(messages=[tool_job()["messages"][0], assistant, tool_result]),
        )
    assert final.status == "ok", final.error
    assert final.result is not None
    assert final.result.tool_calls is None
    assert final.result.finish_reason == "stop"
    assert final.result.text == expected_text(TOOL_MODEL, ASK_WEATHER, 8)


@KINDS
async def test_streamed_tool_call_deltas_reassemble_into_the_same_calls(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, kind: str
) -> None:
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        whole = await ask(nc, llm(node_id), tool_job())
        chunks, final = await stream(nc, llm(node_id), tool_job(stream=True))
    assert final.status == "ok", final.error
    assembler = ToolCallAssembler()
    for chunk in chunks:
        assert chunk.tool_calls, "a tool-calling answer streams tool-call pieces only"
        assembler.add(chunk.tool_calls)
    assert [chunk.seq for chunk in chunks] == list(range(1, len(chunks) + 1))
    assert whole.result is not None
    assert final.result is not None
    assert assembler.calls() == whole.result.tool_calls == final.result.tool_calls
    assert final.result.finish_reason == "tool_calls"


@KINDS
async def test_json_modes_answer_json_matching_the_schema(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, kind: str
) -> None:
    schema_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
    }
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        any_json = await ask(
            nc, llm(node_id), {"prompt": "describe", "response_format": {"type": "json_object"}}
        )
        person = await ask(
            nc, llm(node_id), {"prompt": "a person", "response_format": schema_format}
        )
        chunks, streamed = await stream(
            nc,
            llm(node_id),
            {"prompt": "a person", "response_format": schema_format, "stream": True},
        )
    assert any_json.result is not None, any_json.error
    assert isinstance(json.loads(any_json.result.text), dict)
    assert person.result is not None, person.error
    jsonschema.validate(json.loads(person.result.text), PERSON_SCHEMA)
    assert streamed.result is not None
    assert "".join(chunk.delta for chunk in chunks) == streamed.result.text == person.result.text


@KINDS
async def test_embeddings_of_a_list_are_the_inputs_vectors_in_order(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, kind: str
) -> None:
    texts = ["the cat sat", "on the mat", "the cat sat"]
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        listed = await ask(nc, embed(node_id), {"input": texts})
        single = await ask(
            nc, embed(node_id), {"input": "one", "model": EMBED_MODEL, "dimensions": 4}
        )
    assert listed.status == "ok", listed.error
    assert listed.model == EMBED_MODEL  # the node's default embed model
    assert listed.result is not None
    assert listed.result.embeddings is not None
    assert listed.result.embeddings == [expected_embedding(EMBED_MODEL, t) for t in texts]
    assert listed.result.embeddings[0] == listed.result.embeddings[2]
    assert listed.result.usage.prompt_tokens == 9
    assert single.result is not None, single.error
    assert single.result.embeddings == [expected_embedding(EMBED_MODEL, "one", 4)]


@KINDS
async def test_logprobs_come_back_one_per_generated_token(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, kind: str
) -> None:
    job = {"model": TOOL_MODEL, "prompt": "hi", "logprobs": True, "top_logprobs": 2}
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        response = await ask(nc, llm(node_id), job)
        _, streamed = await stream(nc, llm(node_id), {**job, "stream": True})
    assert response.result is not None, response.error
    assert response.result.logprobs is not None
    tokens = [entry["token"] for entry in response.result.logprobs["content"]]
    assert "".join(tokens) == response.result.text == expected_text(TOOL_MODEL, "hi", 8)
    assert streamed.result is not None
    assert streamed.result.logprobs == response.result.logprobs


@KINDS
async def test_what_a_model_cannot_do_is_refused_before_the_runtime_is_called(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, kind: str
) -> None:
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        no_tools = await ask(nc, llm(node_id), tool_job(model=PLAIN_MODEL))
        not_a_chat_model = await ask(nc, llm(node_id), {"model": EMBED_MODEL, "prompt": "hi"})
        not_an_embedder = await ask(nc, embed(node_id), {"model": TOOL_MODEL, "input": "x"})
        two_choices = await ask(nc, llm(node_id), {"prompt": "hi", "n": 2})
        streamed_embed = await ask(nc, embed(node_id), {"input": "x", "stream": True})
    expectations = [
        (no_tools, "tools", f"model '{PLAIN_MODEL}' on node {node_id} does not support tools"),
        (not_a_chat_model, "prompt", "does not support completion"),
        (not_an_embedder, "input", "does not support embedding"),
        (two_choices, "params.n", "one choice"),
        (streamed_embed, "stream", "not streamed"),
    ]
    for response, field, reason in expectations:
        assert response.error is not None, (field, response)
        assert response.error.code == "BAD_REQUEST"
        assert response.error.message.startswith(f"{field}: ")
        assert reason in response.error.message
    assert sim.calls[PLAIN_MODEL] == sim.calls[EMBED_MODEL] == sim.calls[TOOL_MODEL] == 0


async def test_ollama_refuses_what_it_has_no_parameter_for(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(sim.url, kind="ollama")]):
        unknown = await ask(nc, llm(node_id), {"prompt": "hi", "extra": {"best_of": 3}})
        mapped = await ask(
            nc, llm(node_id), {"prompt": "hi", "extra": {"top_k": 5, "store": False}}
        )
    assert unknown.error is not None
    assert unknown.error.message.startswith("extra.best_of: ")
    assert unknown.error.code == "BAD_REQUEST"
    assert mapped.status == "ok", mapped.error


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
async def test_ollama_answers_a_forced_tool_call_held_to_its_schema(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, choice: Any
) -> None:
    job = tool_job(messages=[{"role": "user", "content": "no tool named here"}], tool_choice=choice)
    job["stream"] = False
    async with start_worker(backends=[backend(sim.url, kind="ollama")]):
        whole = await ask(nc, llm(node_id), job)
        chunks, final = await stream(nc, llm(node_id), job)
    assert whole.result is not None, whole.error
    assert whole.result.finish_reason == "tool_calls"
    assert whole.result.text == ""
    assert whole.result.tool_calls is not None
    (call,) = whole.result.tool_calls
    assert call.function.name == "get_weather"
    schema: Any = WEATHER_TOOL["function"]
    jsonschema.validate(json.loads(call.function.arguments), schema["parameters"])
    assert final.result is not None
    assert final.result.tool_calls == whole.result.tool_calls
    assert all(not chunk.delta for chunk in chunks)  # the JSON text is never sent as text


async def test_openai_compatible_runtimes_get_extra_fields_and_forced_tools(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    job = tool_job(
        messages=[{"role": "user", "content": "no tool named here"}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra={"top_k": 5, "min_p": 0.1},
    )
    async with start_worker(backends=[backend(sim.url, kind="vllm")]):
        forced = await ask(nc, llm(node_id), job)
    assert forced.result is not None, forced.error
    assert forced.result.tool_calls is not None
    assert [call.function.name for call in forced.result.tool_calls] == ["get_weather"]


async def test_the_record_says_what_each_model_can_do(
    sim: Simulator, start_worker: WorkerFactory
) -> None:
    override = {PLAIN_MODEL: ["completion", "tools"]}
    async with (
        start_worker(backends=[backend(sim.url)]) as from_ollama,
        start_worker(
            node_id="names-node",
            backends=[backend(sim.url, kind="vllm", capabilities=override)],
        ) as from_names,
    ):
        ollama_caps = {m.name: m.capabilities for m in from_ollama.capabilities(1).served_models}
        named = {m.name: m.capabilities for m in from_names.capabilities(1).served_models}
        types = {m.name: m.type for m in from_names.capabilities(1).served_models}
        features = from_ollama.capabilities(1).wire_features
    assert ollama_caps == {
        TOOL_MODEL: ("completion", "tools"),
        PLAIN_MODEL: ("completion",),
        EMBED_MODEL: ("embedding",),
    }
    assert named == {
        TOOL_MODEL: ("completion", "tools", "thinking"),
        PLAIN_MODEL: ("completion", "tools"),
        EMBED_MODEL: ("embedding",),
    }
    assert types[EMBED_MODEL] == "embed"
    assert {"tools", "response_format", "embed", "extra"} <= set(features)


@KINDS
async def test_a_raw_prompt_is_a_legacy_completion(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, kind: str
) -> None:
    job = {"model": TOOL_MODEL, "prompt": "Once upon a time", "raw": True, "max_tokens": 5}
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        whole = await ask(nc, llm(node_id), job)
        chunks, streamed = await stream(nc, llm(node_id), {**job, "stream": True})
        fill_in = await ask(nc, llm(node_id), {"prompt": "def f(", "suffix": "):"})
        chatty = await ask(
            nc, llm(node_id), {**job, "prompt": None, "messages": [{"content": "x"}]}
        )
    assert whole.result is not None, whole.error
    assert whole.result.text == expected_text(TOOL_MODEL, "Once upon a time", 5)
    assert whole.result.finish_reason == "length"
    assert streamed.result is not None
    assert "".join(chunk.delta for chunk in chunks) == streamed.result.text == whole.result.text
    assert fill_in.error is not None
    assert fill_in.error.message.startswith("suffix: ")
    assert "does not support insert" in fill_in.error.message
    assert chatty.error is not None
    assert chatty.error.message.startswith("raw: a completion job sends `prompt`")


CLOCK_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


@KINDS
async def test_parallel_tool_calls_false_gets_one_call(
    nc: NatsClient, sim: Simulator, start_worker: WorkerFactory, node_id: str, kind: str
) -> None:
    both = tool_job(
        messages=[{"role": "user", "content": "call get_weather and get_time"}],
        tools=[WEATHER_TOOL, CLOCK_TOOL],
    )
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        parallel = await ask(nc, llm(node_id), both)
        single = await ask(nc, llm(node_id), {**both, "parallel_tool_calls": False})
        chunks, streamed = await stream(
            nc, llm(node_id), {**both, "parallel_tool_calls": False, "stream": True}
        )
    assert parallel.result is not None, parallel.error
    assert single.result is not None, single.error
    assert streamed.result is not None, streamed.error
    assert [c.function.name for c in parallel.result.tool_calls or ()] == [
        "get_weather",
        "get_time",
    ]
    assert single.result.tool_calls == parallel.result.tool_calls[:1]  # type: ignore[index]
    assert streamed.result.tool_calls == single.result.tool_calls
    assert {delta.index for chunk in chunks for delta in chunk.tool_calls or ()} == {0}


async def test_inferbus_req_embeds_plain_text_and_prints_the_vectors(
    nats_server: NatsServer, sim: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    command = ["req", node_id, "hello there", "--type", "embed", "--server", nats_server.url]
    async with start_worker(backends=[backend(sim.url)]):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.cli",
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert json.loads(out) == {
        "text": "",
        "embeddings": [expected_embedding(EMBED_MODEL, "hello there")],
    }
