"""Where the router answered what OpenAI refuses, or answered in no client's shape: the
conversation refusals with their `param`, schemas nested too deep on every route, replays
that say so, the providers' models in `/v1/models`, and a bug answered in the path's
dialect — the official `openai` client and plain HTTP against router + NATS + worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr

from router.http.dialect import as_spelled
from router.http.openai_checks import conversation_refusal
from router.service import RouterService
from services.errors import ErrorCode, InferbusError
from services.wire import JobResponse, decode_request
from services.wire_features import MAX_JSON_DEPTH, json_depth_exceeds
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.test_worker_openai_features import (
    ASK_WEATHER,
    EMBED_MODEL,
    MODELS,
    TOOL_MODEL,
    WEATHER_TOOL,
)
from tools.simulator import Simulator, expected_embedding

USER = {"role": "user", "content": ASK_WEATHER}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
ASSISTANT = {"role": "assistant", "content": None, "tool_calls": [CALL]}


def nested_schema(levels: int) -> dict[str, Any]:
    """An object schema whose property holds an object schema, `levels` times."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}}
    return schema


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([USER], None),
        ([USER, ASSISTANT, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}], None),
        ([{"role": "developer", "content": "be brief"}, USER], None),
        ([{"content": "no role is a user"}], None),
        ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        ([USER, {"role": "usr", "content": "hi"}], "messages[1].role"),
        ([USER, ASSISTANT, {"role": "tool", "content": "ok"}], "messages[2].tool_call_id"),
        (
            [USER, ASSISTANT, {"role": "tool", "tool_call_id": "call_9", "content": "ok"}],
            "messages[2].tool_call_id",
        ),
        ([USER, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}], "messages[1]"),
    ],
)
def test_conversation_refusals_name_the_param(messages: list[Any], param: str | None) -> None:
    refusal = conversation_refusal({"messages": messages})
    if param is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.code == ErrorCode.BAD_REQUEST
        assert refusal.message.startswith(param)


@pytest.mark.parametrize(
    ("value", "limit", "exceeds"),
    [
        ("flat", 0, False),
        ({}, 1, False),
        ({"a": {}}, 1, True),
        ([[[]]], 3, False),
        ([[[]]], 2, True),
        ({"a": [1, {"b": [2]}]}, 4, False),
        ({"a": [1, {"b": [2]}]}, 3, True),
        (nested_schema(130), MAX_JSON_DEPTH, True),
        (nested_schema(40), MAX_JSON_DEPTH, False),
    ],
)
def test_json_depth_is_measured_without_recursion(value: Any, limit: int, exceeds: bool) -> None:
    assert json_depth_exceeds(value, limit) is exceeds


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=list(MODELS), tokens=6) as simulator:
        yield simulator


@pytest.fixture
async def router(
    sim: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> AsyncIterator[RouterService]:
    async with start_worker(backends=[backend(sim.url)]), start_router() as service:
        yield service


@pytest.fixture
async def client(router: RouterService) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


REFUSED_BODIES = [
    pytest.param(
        {"messages": [USER, ASSISTANT, {"role": "tool", "content": "ok"}]},
        "messages[2].tool_call_id",
        id="tool-without-call-id",
    ),
    pytest.param(
        {"messages": [USER, ASSISTANT, {"role": "tool", "tool_call_id": "x", "content": "ok"}]},
        "messages[2].tool_call_id",
        id="tool-answering-no-call",
    ),
    pytest.param(
        {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", id="wizard"
    ),
    pytest.param(
        {
            "messages": [USER],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        },
        "response_format.json_schema.schema",
        id="json-schema-without-schema",
    ),
    pytest.param(
        {
            "messages": [USER],
            "tools": [
                {"type": "function", "function": {"name": "deep", "parameters": nested_schema(130)}}
            ],
        },
        "tools.0.function.parameters",
        id="tool-schema-too-deep",
    ),
    pytest.param(
        {
            "messages": [USER],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "deep", "schema": nested_schema(130)},
            },
        },
        "response_format.json_schema.schema",
        id="response-schema-too-deep",
    ),
]


@pytest.mark.parametrize(("body", "param"), REFUSED_BODIES)
async def test_what_openai_refuses_is_a_400_with_its_param_and_reaches_no_runtime(
    client: openai.AsyncOpenAI, sim: Simulator, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=TOOL_MODEL, **body)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert sim.calls.get(TOOL_MODEL, 0) == 0


DEEP_TOOL = {"type": "function", "function": {"name": "deep", "parameters": nested_schema(130)}}
# Every job route with a schema nested too deep, and the field its own dialect names.
DEEP_BODIES = [
    pytest.param(
        "/infer",
        {"messages": [USER], "tools": [DEEP_TOOL]},
        "tools.0.function.parameters",
        id="infer",
    ),
    pytest.param(
        "/infer",
        {"prompt": "x", "tools": [DEEP_TOOL], "stream": True},
        "tools.0.function.parameters",
        id="infer-streamed",
    ),
    pytest.param(
        "/v1/completions",
        {"model": TOOL_MODEL, "prompt": "x", "extra": {"schema": nested_schema(130)}},
        "extra",
        id="completions",
    ),
    pytest.param(
        "/v1/messages",
        {
            "model": TOOL_MODEL,
            "max_tokens": 8,
            "messages": [USER],
            "tools": [{"name": "deep", "input_schema": nested_schema(130)}],
        },
        "tools[0].input_schema",
        id="messages-tool",
    ),
    pytest.param(
        "/v1/messages",
        {
            "model": TOOL_MODEL,
            "max_tokens": 8,
            "messages": [USER],
            "stream": True,
            "output_config": {"format": {"type": "json_schema", "schema": nested_schema(130)}},
        },
        "output_config.format.schema",
        id="messages-format-streamed",
    ),
    pytest.param(
        "/v1/responses",
        {
            "model": TOOL_MODEL,
            "input": "x",
            "tools": [{"type": "function", "name": "deep", "parameters": nested_schema(130)}],
        },
        "tools[0].parameters",
        id="responses-tool",
    ),
    pytest.param(
        "/v1/responses",
        {
            "model": TOOL_MODEL,
            "input": "x",
            "stream": True,
            "text": {"format": {"type": "json_schema", "name": "d", "schema": nested_schema(130)}},
        },
        "text.format.schema",
        id="responses-format-streamed",
    ),
    pytest.param(
        "/api/chat",
        {"model": TOOL_MODEL, "messages": [USER], "tools": [DEEP_TOOL]},
        "tools.0.function.parameters",
        id="ollama-chat",
    ),
    pytest.param(
        "/api/generate",
        {"model": TOOL_MODEL, "prompt": "x", "format": nested_schema(130)},
        "format",
        id="ollama-generate",
    ),
]


def error_message(path: str, body: dict[str, Any]) -> str:
    """The message of an error body in the dialect of `path`."""
    error = body["error"]
    return str(error if isinstance(error, str) else error["message"])


@pytest.mark.parametrize(("path", "body", "field"), DEEP_BODIES)
async def test_a_schema_nested_too_deep_is_a_400_naming_the_field_on_every_route(
    router: RouterService, sim: Simulator, path: str, body: dict[str, Any], field: str
) -> None:
    async with httpx.AsyncClient(base_url=router.url) as http:
        answer = await http.post(path, json=body)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/json")
    assert error_message(path, answer.json()).startswith(f"{field}:")
    if path.startswith("/v1/") and path != "/v1/messages":
        assert answer.json()["error"]["param"] == field
    assert sim.calls.get(TOOL_MODEL, 0) == 0


async def test_a_node_refuses_a_schema_nested_too_deep(
    nc: NatsClient, node_id: str, router: RouterService
) -> None:
    """Straight to a node: the worker refuses it too (its JSON parser stops first)."""
    raw = json.dumps({"messages": [USER], "tools": [DEEP_TOOL]}).encode()
    reply = await nc.request(f"node.{node_id}.llm.request", raw, timeout=10)
    assert json.loads(reply.data)["error"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("levels", [70, 130])
def test_a_node_decodes_a_deep_schema_into_a_refusal(levels: int) -> None:
    deep = [{"type": "function", "function": {"name": "deep", "parameters": nested_schema(levels)}}]
    raw = json.dumps({"prompt": "x", "tools": deep}).encode()
    decoded = decode_request(raw, default_type="llm")
    assert isinstance(decoded, JobResponse)
    assert decoded.error is not None
    assert decoded.error.code == ErrorCode.BAD_REQUEST


async def test_a_replayed_chat_answer_says_so_in_a_header(router: RouterService) -> None:
    body = {"model": TOOL_MODEL, "messages": [USER], "tools": [WEATHER_TOOL]}
    headers = {"Idempotency-Key": "replay-me"}
    async with httpx.AsyncClient(base_url=router.url) as http:
        first = await http.post("/v1/chat/completions", json=body, headers=headers)
        again = await http.post("/v1/chat/completions", json=body, headers=headers)
        streamed = await http.post(
            "/v1/chat/completions", json={**body, "stream": True}, headers=headers
        )
    assert first.status_code == again.status_code == streamed.status_code == 200
    assert "x-inferbus-cached" not in first.headers
    assert again.headers["x-inferbus-cached"] == "true"
    assert streamed.headers["x-inferbus-cached"] == "true"
    assert again.json()["choices"] == first.json()["choices"]


ASK = [{"role": "user", "content": "hi"}]
REPLAYED = [
    pytest.param(
        "/v1/messages", {"model": TOOL_MODEL, "max_tokens": 8, "messages": ASK}, id="messages"
    ),
    pytest.param(
        "/v1/messages",
        {"model": TOOL_MODEL, "max_tokens": 8, "messages": ASK, "stream": True},
        id="messages-streamed",
    ),
    pytest.param("/v1/responses", {"model": TOOL_MODEL, "input": "hi"}, id="responses"),
    pytest.param("/v1/completions", {"model": TOOL_MODEL, "prompt": "hi"}, id="completions"),
    pytest.param("/v1/embeddings", {"model": EMBED_MODEL, "input": "hi"}, id="embeddings"),
    pytest.param("/infer", {"model": TOOL_MODEL, "prompt": "hi"}, id="infer"),
    pytest.param(
        "/api/chat", {"model": TOOL_MODEL, "messages": ASK, "stream": False}, id="ollama-chat"
    ),
    pytest.param("/api/chat", {"model": TOOL_MODEL, "messages": ASK}, id="ollama-chat-streamed"),
    pytest.param("/api/generate", {"model": TOOL_MODEL, "prompt": "hi"}, id="ollama-generate"),
    pytest.param("/api/embed", {"model": EMBED_MODEL, "input": "hi"}, id="ollama-embed"),
]


@pytest.mark.parametrize(("path", "body"), REPLAYED)
async def test_a_replayed_answer_says_so_in_a_header_on_every_dialect(
    router: RouterService, sim: Simulator, path: str, body: dict[str, Any]
) -> None:
    headers = {"Idempotency-Key": f"replay {path}"}
    async with httpx.AsyncClient(base_url=router.url) as http:
        first = await http.post(path, json=body, headers=headers)
        again = await http.post(path, json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert "x-inferbus-cached" not in first.headers
    assert again.headers["x-inferbus-cached"] == "true"
    assert sim.calls.get(body["model"], 0) == 1  # the duplicate reached no runtime


@pytest.mark.parametrize(
    ("path", "api"), [("/v1/messages", "anthropic"), ("/api/chat", "ollama_chat")]
)
async def test_a_client_gone_before_its_body_arrived_is_cancelled_not_a_bug(
    router: RouterService, path: str, api: str
) -> None:
    """A client that hangs up halfway through its body is its own doing: CANCELLED in the
    metrics, not an INTERNAL error logged with a stack (which anyone could flood)."""
    url = httpx.URL(router.url)
    assert url.port is not None
    _, writer = await asyncio.open_connection(url.host, url.port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    writer.write(head.encode() + b'{"model":')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    counted = f'inferbus_router_requests_total{{api="{api}",status="CANCELLED",via="none"}} 1.0'
    async with httpx.AsyncClient(base_url=router.url) as http:
        for _ in range(400):  # 20 s at most for the router to hear the hang-up
            metrics = (await http.get("/metrics")).text
            if counted in metrics:
                break
            await asyncio.sleep(0.05)
    assert counted in metrics
    assert f'api="{api}",status="INTERNAL"' not in metrics


@pytest.mark.parametrize(
    ("message", "spelled", "expected"),
    [
        (
            "params.max_tokens: big",
            {"params.max_tokens": "max_output_tokens"},
            "max_output_tokens: big",
        ),
        ("params.stop.str: bad", {"params.stop": "stop_sequences"}, "stop_sequences.str: bad"),
        ("params.stopper: bad", {"params.stop": "stop_sequences"}, "params.stopper: bad"),
        ("params.top_p: bad", {"params": "x", "params.top_p": "top_p"}, "top_p: bad"),
        ("tools.0.function: deep", {"params.top_p": "top_p"}, "tools.0.function: deep"),
        ("no field here", {"no field here": "x"}, "no field here"),
    ],
)
def test_a_refused_job_names_the_field_as_the_dialect_spells_it(
    message: str, spelled: dict[str, str], expected: str
) -> None:
    renamed = as_spelled(InferbusError(ErrorCode.BAD_REQUEST, message), spelled)
    assert renamed.message == expected
    other = InferbusError(ErrorCode.PAYLOAD_TOO_LARGE, message)
    assert as_spelled(other, spelled) is other


ASK_LONG = [{"role": "user", "content": "hi"}]
MISSPELLED = [
    pytest.param(
        "/v1/chat/completions",
        {"model": TOOL_MODEL, "messages": ASK_LONG, "max_tokens": 2**40},
        "max_tokens",
        id="chat",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": TOOL_MODEL, "messages": ASK_LONG, "temperature": "hot"},
        "temperature",
        id="chat-temperature",
    ),
    pytest.param(
        "/v1/responses",
        {"model": TOOL_MODEL, "input": "hi", "max_output_tokens": 2**40},
        "max_output_tokens",
        id="responses",
    ),
    pytest.param(
        "/v1/messages",
        {"model": TOOL_MODEL, "messages": ASK_LONG, "max_tokens": 2**40},
        "max_tokens",
        id="messages",
    ),
    pytest.param(
        "/v1/messages",
        {
            "model": TOOL_MODEL,
            "messages": ASK_LONG,
            "max_tokens": 8,
            "stop_sequences": ["s"] * 1_000,
        },
        "stop_sequences",
        id="messages-stop",
    ),
    pytest.param(
        "/api/chat",
        {"model": TOOL_MODEL, "messages": ASK_LONG, "options": {"num_predict": 2**40}},
        "options.num_predict",
        id="ollama-chat",
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), MISSPELLED)
async def test_a_refused_parameter_is_named_as_the_client_sent_it(
    router: RouterService, path: str, body: dict[str, Any], field: str
) -> None:
    async with httpx.AsyncClient(base_url=router.url) as http:
        answer = await http.post(path, json=body)
    assert answer.status_code == 400
    assert error_message(path, answer.json()).startswith(f"{field}:")
    if path.startswith("/v1/") and path != "/v1/messages":
        assert answer.json()["error"]["param"] == field


async def test_models_lists_the_providers_models_owned_by_their_provider(
    sim: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    providers = {
        "cloudy": {"base_url": "http://127.0.0.1:9/v1", "models": ["gpt-sim", TOOL_MODEL]},
        "aliased": {"base_url": "http://127.0.0.1:9/v1", "aliases": {"fast": "gpt-x"}},
    }
    async with (
        start_worker(backends=[backend(sim.url)]),
        start_router(providers=providers) as service,
    ):
        client = openai.AsyncOpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0)
        listed = {model.id: model.owned_by async for model in client.models.list()}
        fast = await client.models.retrieve("fast")
        await client.close()
    assert listed["gpt-sim"] == "cloudy"
    assert listed["fast"] == "aliased"
    assert listed[TOOL_MODEL] != "cloudy"  # the fleet's entry: its nodes own it
    assert fast.owned_by == "aliased"


async def test_langchain_embeddings_work_with_text_inputs(router: RouterService) -> None:
    """LangChain's OpenAIEmbeddings sends token ids unless told not to (which no local
    runtime behind the fleet takes, and which needs tiktoken's files from the internet):
    `check_embedding_ctx_length=False` sends the texts, as the README says."""
    async with httpx.AsyncClient() as http:
        embeddings = OpenAIEmbeddings(
            model=EMBED_MODEL,
            openai_api_base=f"{router.url}/v1",
            openai_api_key=SecretStr("unused"),
            check_embedding_ctx_length=False,
            max_retries=0,
            http_async_client=http,
        )
        vectors = await embeddings.aembed_documents(["alpha", "beta"])
        query = await embeddings.aembed_query("alpha")
    assert len(vectors) == 2
    assert query == pytest.approx(vectors[0], abs=1e-6)
    assert query == pytest.approx(expected_embedding(EMBED_MODEL, "alpha"), abs=1e-6)
