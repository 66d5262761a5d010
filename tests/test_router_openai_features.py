"""The official `openai` client end to end through router + NATS + worker + simulator:
tool-calling loops whole and streamed, JSON modes, embeddings, legacy completions,
capability refusals that never reach a node lacking the capability, and the models routes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from nats.aio.client import Client as NatsClient
from pydantic import AliasChoices, BaseModel, Field

from router.service import RouterService
from services.capabilities import Capabilities, Load, ServedModel, encode_capabilities
from services.wire import JobRequest, accepted_names, openai_job_fields
from services.wire_features import ToolCallAssembler, ToolCallDelta
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import until
from tests.test_worker_openai_features import (
    ASK_WEATHER,
    EMBED_MODEL,
    MODELS,
    PERSON_SCHEMA,
    PLAIN_MODEL,
    TOOL_MODEL,
    WEATHER_TOOL,
)
from tools.simulator import SimModel, Simulator, expected_embedding, expected_text

WEATHER: Any = WEATHER_TOOL


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=list(MODELS), tokens=8) as simulator:
        yield simulator


@pytest.fixture
async def fleet(
    sim: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> AsyncIterator[RouterService]:
    async with start_worker(backends=[backend(sim.url)]), start_router() as router:
        yield router


@pytest.fixture
async def client(fleet: RouterService) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


async def assembled(stream: Any) -> list[dict[str, Any]]:
    """A stream's tool-call deltas joined by `index`, as OpenAI clients join them."""
    assembler = ToolCallAssembler()
    async for chunk in stream:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                assembler.add([ToolCallDelta.model_validate(piece.model_dump())])
    return [call.model_dump() for call in assembler.calls()]


def ask_weather() -> Any:
    return [{"role": "user", "content": ASK_WEATHER}]


async def test_a_tool_calling_loop_through_the_fleet(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(
        model=TOOL_MODEL,
        messages=ask_weather(),
        tools=[WEATHER],
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])

    history: list[Any] = [
        *ask_weather(),
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    final = await client.chat.completions.create(
        model=TOOL_MODEL,
        messages=history,
        tools=[WEATHER],
    )
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content == expected_text(TOOL_MODEL, ASK_WEATHER, 8)


async def test_streamed_tool_calls_reassemble_into_the_whole_answers_calls(
    client: openai.AsyncOpenAI,
) -> None:
    whole = await client.chat.completions.create(
        model=TOOL_MODEL,
        messages=ask_weather(),
        tools=[WEATHER],
    )
    stream = await client.chat.completions.create(
        model=TOOL_MODEL,
        messages=ask_weather(),
        tools=[WEATHER],
        stream=True,
        stream_options={"include_usage": True},
    )
    assembler, finishes, usage = ToolCallAssembler(), [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finishes.append(choice.finish_reason)
            for piece in choice.delta.tool_calls or ():
                assembler.add([ToolCallDelta.model_validate(piece.model_dump())])
    assert whole.choices[0].message.tool_calls is not None
    expected = [call.model_dump() for call in whole.choices[0].message.tool_calls]
    assert [call.model_dump() for call in assembler.calls()] == expected
    assert [reason for reason in finishes if reason] == ["tool_calls"]
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


async def test_json_modes_answer_json_that_parses_and_matches_the_schema(
    client: openai.AsyncOpenAI,
) -> None:
    messages: Any = [{"role": "user", "content": "describe a person"}]
    loose = await client.chat.completions.create(
        model=TOOL_MODEL, messages=messages, response_format={"type": "json_object"}
    )
    strict = await client.chat.completions.create(
        model=TOOL_MODEL,
        messages=messages,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
    )
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)
    person = json.loads(strict.choices[0].message.content or "")
    jsonschema.validate(person, PERSON_SCHEMA)


async def test_embeddings_of_a_list_float_and_base64(client: openai.AsyncOpenAI) -> None:
    texts = ["alpha", "beta", "alpha"]
    as_floats = await client.embeddings.create(
        model=EMBED_MODEL, input=texts, encoding_format="float"
    )
    by_default = await client.embeddings.create(model=EMBED_MODEL, input=texts)  # base64
    shortened = await client.embeddings.create(
        model=EMBED_MODEL, input="one", dimensions=4, encoding_format="float"
    )
    vectors = [item.embedding for item in as_floats.data]
    assert [item.index for item in as_floats.data] == [0, 1, 2]
    assert vectors == [expected_embedding(EMBED_MODEL, text) for text in texts]
    assert vectors[0] == vectors[2]
    decoded = [item.embedding for item in by_default.data]
    assert len(decoded) == len(vectors)
    for got, want in zip(decoded, vectors, strict=True):
        assert got == pytest.approx(want, abs=1e-6)  # float32 on the wire
    assert shortened.data[0].embedding == expected_embedding(EMBED_MODEL, "one", 4)
    assert as_floats.model == EMBED_MODEL
    assert as_floats.usage.prompt_tokens > 0


async def test_legacy_completions_whole_and_streamed(client: openai.AsyncOpenAI) -> None:
    prompt = "Once upon a time"
    whole = await client.completions.create(model=TOOL_MODEL, prompt=prompt, max_tokens=5)
    stream = await client.completions.create(
        model=TOOL_MODEL, prompt=prompt, max_tokens=5, stream=True
    )
    pieces, finishes = [], []
    async for chunk in stream:
        pieces.append(chunk.choices[0].text)
        finishes.append(chunk.choices[0].finish_reason)
    assert whole.object == "text_completion"
    assert whole.choices[0].text == expected_text(TOOL_MODEL, prompt, 5)
    assert whole.choices[0].finish_reason == "length"
    assert "".join(pieces) == whole.choices[0].text
    assert [reason for reason in finishes if reason] == ["length"]


async def test_tools_to_a_model_without_them_is_a_bad_request_and_never_routed(
    client: openai.AsyncOpenAI, sim: Simulator
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=PLAIN_MODEL,
            messages=ask_weather(),
            tools=[WEATHER],
        )
    assert "does not support tools" in str(refused.value)
    # The router's refusal (a worker's names its node): no node was asked.
    assert "on any node that serves it" in str(refused.value)
    assert sim.calls.get(PLAIN_MODEL, 0) == 0
    with pytest.raises(openai.BadRequestError, match="does not support embedding"):
        await client.embeddings.create(model=TOOL_MODEL, input="x")


async def test_a_tools_request_goes_only_to_the_node_whose_model_has_tools(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    shared = "shared:7b"
    async with AsyncExitStack() as stack:
        without = await stack.enter_async_context(
            Simulator(models=[SimModel(shared, tools=False)], tokens=4)
        )
        with_tools = await stack.enter_async_context(Simulator(models=[SimModel(shared)], tokens=4))
        await stack.enter_async_context(start_worker(backends=[backend(without.url)]))
        await stack.enter_async_context(
            start_worker(node_id=f"{node_id}-tools", backends=[backend(with_tools.url)])
        )
        router = await stack.enter_async_context(start_router())
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
        for _ in range(6):
            answer = await client.chat.completions.create(
                model=shared,
                messages=ask_weather(),
                tools=[WEATHER],
            )
            assert answer.choices[0].finish_reason == "tool_calls"
        await client.close()
    assert without.calls.get(shared, 0) == 0
    assert with_tools.calls[shared] == 6


async def test_models_retrieve_known_and_unknown(
    client: openai.AsyncOpenAI, fleet: RouterService
) -> None:
    known = await client.models.retrieve(TOOL_MODEL)
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        listed = (await http.get("/v1/models")).json()["data"]
        unknown_path = await http.post("/v1/nothing-here", json={})
    assert known.id == TOOL_MODEL
    capabilities = {entry["id"]: entry["capabilities"] for entry in listed}
    assert "tools" in capabilities[TOOL_MODEL]
    assert "tools" not in capabilities[PLAIN_MODEL]
    assert capabilities[EMBED_MODEL] == ["embedding"]
    assert unknown_path.status_code == 404
    assert unknown_path.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("kind", ["ollama", "vllm"])
async def test_the_local_runtime_gets_every_field(
    sim: Simulator, start_router: RouterFactory, kind: str
) -> None:
    local = {"kind": kind, "url": sim.url}
    async with start_router(local_node="here", local_runtime=local) as router:
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
        whole = await client.chat.completions.create(
            model=TOOL_MODEL, messages=ask_weather(), tools=[WEATHER]
        )
        stream = await client.chat.completions.create(
            model=TOOL_MODEL, messages=ask_weather(), tools=[WEATHER], stream=True
        )
        streamed = await assembled(stream)
        vectors = await client.embeddings.create(
            model=EMBED_MODEL, input=["a", "b"], encoding_format="float"
        )
        await client.close()
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.tool_calls is not None
    expected = [call.model_dump() for call in whole.choices[0].message.tool_calls]
    assert streamed == expected
    assert [item.embedding for item in vectors.data] == [
        expected_embedding(EMBED_MODEL, text) for text in ("a", "b")
    ]


async def test_a_replayed_stream_carries_the_tool_calls(
    client: openai.AsyncOpenAI, sim: Simulator
) -> None:
    headers = {"Idempotency-Key": "tools-once"}
    whole = await client.chat.completions.create(
        model=TOOL_MODEL, messages=ask_weather(), tools=[WEATHER], extra_headers=headers
    )
    replay = await client.chat.completions.create(
        model=TOOL_MODEL,
        messages=ask_weather(),
        tools=[WEATHER],
        stream=True,
        extra_headers=headers,
    )
    streamed = await assembled(replay)
    assert whole.choices[0].message.tool_calls is not None
    expected = [call.model_dump() for call in whole.choices[0].message.tool_calls]
    assert streamed == expected
    assert sim.calls[TOOL_MODEL] == 1  # the stream was the kept answer, replayed


async def test_an_answer_kept_by_the_worker_replays_its_tool_calls_to_a_stream(
    sim: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """The second router never saw the key: the worker that kept the answer replays it,
    its tool calls as stream chunks, not only in the final answer."""
    headers = {"Idempotency-Key": f"tools-{node_id}"}
    async with (
        start_worker(backends=[backend(sim.url)]),
        start_router() as first,
        start_router() as second,
    ):
        await until(lambda: node_id in first.fleet.nodes, timeout_s=10)
        await until(lambda: node_id in second.fleet.nodes, timeout_s=10)
        one = openai.AsyncOpenAI(base_url=f"{first.url}/v1", api_key="x", max_retries=0)
        two = openai.AsyncOpenAI(base_url=f"{second.url}/v1", api_key="x", max_retries=0)
        whole = await one.chat.completions.create(
            model=TOOL_MODEL, messages=ask_weather(), tools=[WEATHER], extra_headers=headers
        )
        replay = await two.chat.completions.create(
            model=TOOL_MODEL,
            messages=ask_weather(),
            tools=[WEATHER],
            stream=True,
            extra_headers=headers,
        )
        streamed = await assembled(replay)
        await one.close()
        await two.close()
    assert whole.choices[0].message.tool_calls is not None
    assert streamed == [call.model_dump() for call in whole.choices[0].message.tool_calls]
    assert sim.calls[TOOL_MODEL] == 1  # the worker's kept answer, replayed


def announced(node: str, model: str, capabilities: tuple[str, ...]) -> bytes:
    """A record as an older worker (no `wire_features`) would publish it."""
    record = Capabilities(
        node_id=node,
        version="0.older",
        seq=1,
        ts=time.time(),
        ttl_s=60.0,
        served_models=(
            ServedModel(name=model, type="llm", runtime="ollama", capabilities=capabilities),
        ),
        load={"llm": Load(inflight=0, capacity=4)},
    )
    return encode_capabilities(record)


async def test_an_older_worker_never_gets_a_job_using_a_field_it_would_drop(
    nc: NatsClient, start_router: RouterFactory, node_id: str
) -> None:
    tools_job = {"model": "old:7b", "messages": ask_weather(), "tools": [WEATHER]}
    async with (
        start_router() as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        await nc.publish(f"ncs.capabilities.{node_id}", announced(node_id, "old:7b", ()))
        await until(lambda: router.router.fleet.index.type_of("old:7b") is not None)
        refused = await http.post("/v1/chat/completions", json=tools_job)
        plain = await http.post("/infer", json={"model": "old:7b", "prompt": "hi"})
        anonymous = await http.post(
            "/v1/chat/completions", json={"messages": ask_weather(), "tools": [WEATHER]}
        )
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "NO_ROUTE"
    assert error["message"].startswith("old:7b — no capable node: tools: ")
    assert "too old" in error["message"]
    # A plain job is still sent to it (nothing answers there: no worker behind the record).
    assert [attempt["node"] for attempt in plain.json()["route"]["attempts"]] == [node_id]
    assert anonymous.status_code == 503
    assert "tools" in anonymous.json()["error"]["message"]


async def test_native_streams_carry_tool_call_chunks(fleet: RouterService) -> None:
    job = {"model": TOOL_MODEL, "messages": ask_weather(), "tools": [WEATHER], "stream": True}
    async with (
        httpx.AsyncClient(base_url=fleet.url) as http,
        http.stream("POST", "/infer", json=job) as answer,
    ):
        lines = [json.loads(line) async for line in answer.aiter_lines() if line]
    *chunks, final = lines
    assembler = ToolCallAssembler()
    for chunk in chunks:
        assert chunk["delta"] == ""
        assembler.add([ToolCallDelta.model_validate(piece) for piece in chunk["tool_calls"]])
    assert [chunk["seq"] for chunk in chunks] == list(range(1, len(chunks) + 1))
    assert final["result"]["finish_reason"] == "tool_calls"
    assert [call.model_dump() for call in assembler.calls()] == final["result"]["tool_calls"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "says"),
    [
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": [1, 2]}, 400, "input", "token ids"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format", ""),
        ("/v1/completions", {"model": TOOL_MODEL, "prompt": ["a", "b"]}, 400, "prompt", ""),
        (
            "/v1/completions",
            {"model": TOOL_MODEL, "prompt": "def f(", "suffix": "):"},
            400,
            "suffix",
            "does not support insert",
        ),
        (
            "/v1/chat/completions",
            {"model": EMBED_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            400,
            "messages",
            "does not support completion",
        ),
        ("/v1/chat/completions", {"messages": []}, 400, None, ""),
        ("/v1/chat/completions", {"model": "nope", "messages": ask_weather()}, 404, None, ""),
    ],
)
async def test_openai_routes_answer_errors_in_openai_shape(
    fleet: RouterService,
    sim: Simulator,
    path: str,
    body: dict[str, Any],
    status: int,
    param: str | None,
    says: str,
) -> None:
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        answer = await http.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["param"] == param
    assert says in error["message"]
    assert sum(sim.calls.values()) == 0  # refused before any runtime was called


def test_a_field_taken_under_an_alias_is_not_moved_to_extra() -> None:
    class Aliased(BaseModel):
        fallback_models: list[str] | None = Field(
            default=None, validation_alias=AliasChoices("fallback_models", "fallbacks")
        )
        named: str | None = Field(default=None, alias="callName")

    assert accepted_names(Aliased) == {"fallback_models", "fallbacks", "named", "callName"}
    assert {"tools", "response_format", "extra"} <= accepted_names(JobRequest)
    moved = openai_job_fields({"messages": [], "top_k": 4, "stream_options": {}})
    assert moved == {"messages": [], "extra": {"top_k": 4}}
