"""The official `ollama` client pointed at the router: the fleet answers as one Ollama.

Two workers serve different models (and one in common): gpu-a in front of the simulator
speaking Ollama's wire format, gpu-b in front of one speaking OpenAI's (as vLLM does), so
every flow runs over both wire formats; a model only one node serves is reached the same
way. The chat flows are parametrized over a model of each node. One more test puts a
real llama.cpp server (llama-cpp-python's) behind a worker for the real-runtime path.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from node_worker.config import WorkerSettings
from node_worker.worker import Worker
from router.config import RouterSettings
from router.http.ollama_models import OLLAMA_API_VERSION
from router.service import RouterService
from services.nats_server import NatsServer
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.llamacpp import LlamaCppServer
from tests.test_worker_jobs import TINY_PNG
from tests.test_worker_openai_features import ASK_WEATHER, PERSON_SCHEMA, WEATHER_TOOL
from tools.simulator import SimModel, Simulator, expected_embedding, expected_text

TOKENS = 8
SHARED = "llama3.2:3b"
ON_A = "qwen3:8b"  # Ollama's wire format
ON_B = "mistral-nemo:12b"  # OpenAI's wire format
VISION_A = "llava:7b"
VISION_B = "qwen2-vl:2b"
EMBED_A = "nomic-embed-text"
EMBED_B = "bge-m3"
MODELS_A = (
    SimModel(SHARED, family="llama", size_bytes=2_019_393_189),
    SimModel(ON_A, family="qwen3"),
    SimModel(VISION_A, vision=True),
    SimModel(EMBED_A, family="nomic-bert", embedding=True, chat=False),
)
MODELS_B = (
    SimModel(SHARED),
    SimModel(ON_B),
    SimModel(VISION_B, vision=True),
    SimModel(EMBED_B, embedding=True, chat=False),
)
BOTH_WIRES = pytest.mark.parametrize("model", [ON_A, ON_B])
WEATHER: Any = WEATHER_TOOL


class Fleet:
    def __init__(self, router: RouterService, node_a: str, node_b: str, runtime_a: str) -> None:
        self.router = router
        self.url = router.url
        self.node_a = node_a
        self.node_b = node_b
        self.runtime_a = runtime_a  # the simulator playing gpu-a's Ollama


@pytest.fixture(scope="module")
async def fleet(nats_server: NatsServer) -> AsyncIterator[Fleet]:
    suffix = uuid.uuid4().hex[:8]
    node_a, node_b = f"gpu-a-{suffix}", f"gpu-b-{suffix}"
    async with AsyncExitStack() as stack:
        sim_a = await stack.enter_async_context(Simulator(models=list(MODELS_A), tokens=TOKENS))
        sim_b = await stack.enter_async_context(Simulator(models=list(MODELS_B), tokens=TOKENS))
        for node, kind, sim in ((node_a, "ollama", sim_a), (node_b, "vllm", sim_b)):
            settings = WorkerSettings(
                node_id=node,
                nats_url=[nats_server.url],
                backends=[{"kind": kind, "url": sim.url}],
            )
            await stack.enter_async_context(Worker(settings))
        router = await stack.enter_async_context(
            RouterService(
                RouterSettings(nats_url=[nats_server.url], http={"host": "127.0.0.1", "port": 0})
            )
        )
        yield Fleet(router, node_a, node_b, sim_a.url)


@pytest.fixture
async def client(fleet: Fleet) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=fleet.url)
    yield client
    await client.close()  # type: ignore[no-untyped-call]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def test_list_merges_the_fleet_each_model_once(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    names = [model.model or "" for model in listed.models]
    assert sorted(names) == sorted({m.name for m in (*MODELS_A, *MODELS_B)})
    assert len(names) == len(set(names))
    by_name = {model.model: model for model in listed.models}
    shared = by_name[SHARED]  # details from the node that reports them (Ollama's wire)
    assert shared.details is not None
    assert shared.details.family == "llama"
    assert shared.details.quantization_level == "Q4_K_M"
    assert shared.size == 2_019_393_189
    assert shared.digest
    assert shared.modified_at is not None


async def test_ps_says_which_node_runs_what(client: ollama.AsyncClient, fleet: Fleet) -> None:
    running = await client.ps()
    loaded = sorted((model.model or "") for model in running.models)
    assert loaded.count(SHARED) == 2  # loaded on both nodes: one entry per node
    assert ON_A in loaded
    assert ON_B in loaded
    async with httpx.AsyncClient() as http:
        raw = (await http.get(f"{fleet.url}/api/ps")).json()["models"]
    nodes = {(entry["model"], entry["node"]) for entry in raw}
    assert (ON_A, fleet.node_a) in nodes
    assert (ON_B, fleet.node_b) in nodes
    assert {(SHARED, fleet.node_a), (SHARED, fleet.node_b)} <= nodes
    on_a = next(entry for entry in raw if entry["model"] == ON_A)
    assert on_a["size_vram"] > 0  # Ollama reports it; the worker passes it on
    assert on_a["expires_at"] > "2000"


@pytest.mark.parametrize(("model", "capability"), [(ON_A, "tools"), (VISION_B, "vision")])
async def test_show_asks_a_node_that_serves_the_model(
    client: ollama.AsyncClient, model: str, capability: str
) -> None:
    shown = await client.show(model)
    assert shown.capabilities is not None
    assert capability in shown.capabilities
    assert shown.details is not None
    assert shown.modelinfo is not None


async def test_show_and_list_describe_a_shared_model_alike(client: ollama.AsyncClient) -> None:
    """SHARED is on both nodes; only gpu-a's runtime (Ollama) reports its details, so
    `/api/tags` shows gpu-a's record, and `/api/show` asks gpu-a first."""
    listed = next(model for model in (await client.list()).models if model.model == SHARED)
    shown = await client.show(SHARED)
    assert shown.details is not None
    assert listed.details is not None
    assert (shown.details.family, shown.details.quantization_level) == ("llama", "Q4_K_M")
    assert shown.details.family == listed.details.family
    assert shown.modelfile  # Ollama's own answer, not one written from discovery


async def test_show_of_an_unknown_model_is_ollamas_404(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("no-such-model:1b")
    assert missing.value.status_code == 404
    assert "no-such-model:1b" in missing.value.error


@BOTH_WIRES
async def test_chat_whole_with_the_nodes_timings(client: ollama.AsyncClient, model: str) -> None:
    answer = await client.chat(
        model=model, messages=user("hello there"), options={"num_ctx": 4096}, keep_alive="10m"
    )
    assert answer.message.content == expected_text(model, "hello there", TOKENS)
    assert answer.message.role == "assistant"
    assert answer.done is True
    assert answer.done_reason == "stop"
    assert answer.eval_count == TOKENS
    assert answer.prompt_eval_count
    assert answer.total_duration
    assert answer.total_duration > 0
    assert answer.model == model


@BOTH_WIRES
async def test_chat_streamed_is_ndjson_by_default(client: ollama.AsyncClient, model: str) -> None:
    parts = [part async for part in await client.chat(model, user("stream me"), stream=True)]
    text = "".join(part.message.content or "" for part in parts)
    assert text == expected_text(model, "stream me", TOKENS)
    assert [part.done for part in parts].count(True) == 1
    final = parts[-1]
    assert final.done is True
    assert final.done_reason == "stop"
    assert final.eval_count == TOKENS
    assert final.eval_duration  # the runtime's or the worker's measured split
    assert final.prompt_eval_duration


async def test_keep_alive_reaches_the_nodes_ollama(
    client: ollama.AsyncClient, fleet: Fleet
) -> None:
    await client.chat(ON_A, user("hi"), keep_alive="2h")
    async with httpx.AsyncClient() as http:
        loaded = (await http.get(f"{fleet.runtime_a}/api/ps")).json()["models"]
    expires_at = next(entry["expires_at"] for entry in loaded if entry["model"] == ON_A)
    # Ollama's default is 5 minutes: the node's runtime was told two hours
    assert datetime.fromisoformat(expires_at) > datetime.now(UTC) + timedelta(hours=1)


async def test_a_raw_stream_is_ndjson_unless_told_otherwise(fleet: Fleet) -> None:
    async with httpx.AsyncClient() as http:
        streamed = await http.post(
            f"{fleet.url}/api/chat", json={"model": ON_A, "messages": user("hi")}
        )
        whole = await http.post(
            f"{fleet.url}/api/chat", json={"model": ON_A, "messages": user("hi"), "stream": False}
        )
    assert streamed.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert len(lines) == TOKENS + 1
    assert lines[-1]["done"] is True
    assert whole.json()["message"]["content"] == expected_text(ON_A, "hi", TOKENS)


@BOTH_WIRES
async def test_chat_tool_loop(client: ollama.AsyncClient, model: str) -> None:
    first = await client.chat(model, user(ASK_WEATHER), tools=[WEATHER_TOOL])
    assert first.message.tool_calls
    (call,) = first.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, dict)  # Ollama's shape: an object
    jsonschema.validate(dict(call.function.arguments), WEATHER["function"]["parameters"])
    assert first.done_reason == "stop"
    history: list[Any] = [
        *user(ASK_WEATHER),
        first.message,
        {"role": "tool", "tool_name": "get_weather", "content": '{"sky": "clear"}'},
    ]
    final = await client.chat(model, history, tools=[WEATHER_TOOL])
    assert not final.message.tool_calls
    assert final.message.content == expected_text(model, ASK_WEATHER, TOKENS)


@BOTH_WIRES
async def test_chat_streamed_tool_calls_arrive_whole(
    client: ollama.AsyncClient, model: str
) -> None:
    parts = [
        part
        async for part in await client.chat(
            model, user(ASK_WEATHER), tools=[WEATHER_TOOL], stream=True
        )
    ]
    calls = [call for part in parts for call in part.message.tool_calls or ()]
    assert [call.function.name for call in calls] == ["get_weather"]
    assert isinstance(calls[0].function.arguments, dict)
    assert parts[-1].done is True


@BOTH_WIRES
async def test_chat_format_schema_answers_matching_json(
    client: ollama.AsyncClient, model: str
) -> None:
    answer = await client.chat(model, user("describe a person"), format=PERSON_SCHEMA)
    jsonschema.validate(json.loads(answer.message.content or ""), PERSON_SCHEMA)
    loose = await client.chat(model, user("describe a person"), format="json")
    assert isinstance(json.loads(loose.message.content or ""), dict)


@pytest.mark.parametrize("model", [VISION_A, VISION_B])
async def test_chat_with_an_image_goes_to_a_vision_model(
    client: ollama.AsyncClient, model: str
) -> None:
    messages = [{"role": "user", "content": "what is this?", "images": [TINY_PNG]}]
    answer = await client.chat(model, messages)
    assert answer.message.content == expected_text(model, "what is this?", TOKENS)


@BOTH_WIRES
async def test_generate_whole_and_streamed(client: ollama.AsyncClient, model: str) -> None:
    whole = await client.generate(model, "why is the sky blue?", options={"num_predict": 5})
    assert whole.response == expected_text(model, "why is the sky blue?", 5)
    assert whole.done_reason == "length"
    assert whole.eval_count == 5
    parts = [part async for part in await client.generate(model, "tell me", stream=True)]
    assert "".join(part.response or "" for part in parts) == expected_text(model, "tell me", TOKENS)
    assert parts[-1].done is True


async def test_a_name_without_its_tag_is_its_latest(fleet: Fleet) -> None:
    async with Simulator(models=[SimModel("phi4:latest")], tokens=TOKENS) as sim:
        settings = WorkerSettings(
            node_id=f"gpu-c-{uuid.uuid4().hex[:8]}",
            nats_url=fleet.router.settings.nats_url,
            backends=[{"kind": "ollama", "url": sim.url}],
        )
        async with Worker(settings), ollama.AsyncClient(host=fleet.url) as client:
            await until_listed(client, "phi4:latest")
            answer = await client.chat("phi4", user("hi"))
            shown = await client.show("phi4")
    assert answer.message.content == expected_text("phi4:latest", "hi", TOKENS)
    assert answer.model == "phi4:latest"
    assert shown.details is not None


async def until_listed(client: ollama.AsyncClient, name: str) -> None:
    """Wait (bounded) until the router lists a model a new worker just announced."""
    async with asyncio.timeout(10):
        while True:
            if name in [model.model for model in (await client.list()).models]:
                return
            await asyncio.sleep(0.05)


async def test_generate_with_a_system_message(client: ollama.AsyncClient) -> None:
    answer = await client.generate(ON_A, "hi", system="be brief")
    assert answer.response == expected_text(ON_A, "hi", TOKENS)


@BOTH_WIRES
async def test_generate_raw_sends_the_prompt_as_it_is(
    client: ollama.AsyncClient, model: str
) -> None:
    prompt = "[INST] why is the sky blue? [/INST]"
    whole = await client.generate(model, prompt, raw=True, options={"num_predict": 5})
    assert whole.response == expected_text(model, prompt, 5)
    parts = [part async for part in await client.generate(model, prompt, raw=True, stream=True)]
    assert "".join(part.response or "" for part in parts) == expected_text(model, prompt, TOKENS)
    assert parts[-1].done is True


async def test_a_template_of_its_own_is_applied_by_a_node_running_ollama(
    client: ollama.AsyncClient, fleet: Fleet
) -> None:
    template = "<|system|>{{ .System }}<|user|>{{ .Prompt }}<|assistant|>"
    rendered = "<|system|>be brief<|user|>hi<|assistant|>"
    # SHARED is on both nodes; only gpu-a's runtime (Ollama) applies a template
    for _ in range(4):
        whole = await client.generate(SHARED, "hi", system="be brief", template=template)
        assert whole.response == expected_text(SHARED, rendered, TOKENS)
    parts = [
        part
        async for part in await client.generate(
            SHARED, "hi", system="be brief", template=template, stream=True
        )
    ]
    assert "".join(part.response or "" for part in parts) == expected_text(SHARED, rendered, TOKENS)
    async with httpx.AsyncClient() as http:
        body = {"model": SHARED, "prompt": "hi", "template": template, "stream": False}
        routed = (await http.post(f"{fleet.url}/api/generate", json=body)).json()
    assert routed["route"]["node"] == fleet.node_a
    with pytest.raises(ollama.ResponseError) as refused:  # served by vLLM's wire only
        await client.generate(ON_B, "hi", template=template)
    assert refused.value.status_code == 400
    assert refused.value.error.startswith("template: ")
    assert "Ollama" in refused.value.error or "ollama" in refused.value.error


@pytest.mark.parametrize("model", [EMBED_A, EMBED_B])
async def test_embed_and_the_older_embeddings(client: ollama.AsyncClient, model: str) -> None:
    texts = ["alpha", "beta"]
    embedded = await client.embed(model, texts)
    assert [list(vector) for vector in embedded.embeddings] == [
        expected_embedding(model, text) for text in texts
    ]
    assert embedded.model == model
    older = await client.embeddings(model, "alpha")
    assert list(older.embedding) == expected_embedding(model, "alpha")


async def test_a_model_no_node_serves_is_ollamas_404(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat("no-such-model:1b", user("hi"))
    assert missing.value.status_code == 404
    assert "not found" in missing.value.error  # what Ollama clients look for
    assert "no-such-model:1b" in missing.value.error


async def test_think_on_a_model_that_cannot_is_refused_as_ollama_does(
    client: ollama.AsyncClient,
) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        await client.chat(ON_A, user("hi"), think=True)
    assert refused.value.status_code == 400
    assert refused.value.error.startswith("think: ")
    assert "does not support thinking" in refused.value.error
    answer = await client.chat(ON_A, user("hi"), think=False)  # off: asks nothing of it
    assert answer.message.content == expected_text(ON_A, "hi", TOKENS)


async def test_a_load_request_loads_the_model_on_a_node_and_answers_load(
    client: ollama.AsyncClient,
) -> None:
    loaded = await client.generate(ON_B)
    assert (loaded.response, loaded.done, loaded.done_reason) == ("", True, "load")
    unloaded = await client.chat(ON_A, [], keep_alive=0)
    assert unloaded.done_reason == "unload"


async def test_probes_version_and_errors_in_ollamas_shape(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        root = await http.get("/")
        head = await http.head("/")
        version = await http.get("/api/version")
        unknown = await http.get("/api/no-such-thing")
        wrong_method = await http.get("/api/chat")
        pull = await http.post("/api/pull", json={"model": SHARED})
        delete = await http.request("DELETE", "/api/delete", json={"model": SHARED})
        bad_json = await http.post("/api/chat", content=b"{not json")
        no_model = await http.post("/api/chat", json={"messages": user("hi")})
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert (head.status_code, head.text) == (200, "")
    assert version.json() == {"version": OLLAMA_API_VERSION}
    assert unknown.status_code == 404
    assert wrong_method.status_code == 405
    assert pull.status_code == delete.status_code == 501
    assert "does not manage models" in pull.json()["error"]
    assert bad_json.status_code == no_model.status_code == 400
    assert no_model.json() == {"error": "model is required"}
    for answer in (unknown, wrong_method, pull, delete, bad_json):
        assert set(answer.json()) == {"error"}
        assert isinstance(answer.json()["error"], str)


async def test_a_stream_refused_before_its_first_piece_is_a_plain_error(fleet: Fleet) -> None:
    body = {"model": VISION_A, "messages": [{"role": "user", "content": "x", "images": ["!"]}]}
    async with httpx.AsyncClient() as http:
        refused = await http.post(f"{fleet.url}/api/chat", json=body)
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/json"
    assert "images" in refused.json()["error"]


async def test_a_llamacpp_node_through_the_official_client(
    llama_server: LlamaCppServer, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """The real-runtime path: llama.cpp's server (OpenAI's wire) behind a worker."""
    model = llama_server.model
    # num_ctx and keep_alive mean something to Ollama only: other runtimes must not choke
    options = {"num_predict": 4, "temperature": 0, "top_k": 1, "seed": 1, "num_ctx": 512}
    async with (
        start_worker(backends=[backend(llama_server.url, kind="llamacpp")]) as worker,
        start_router() as router,
    ):
        client = ollama.AsyncClient(host=router.url)
        try:
            whole = await client.chat(model, user("hello"), options=options, keep_alive="5m")
            parts = [
                part
                async for part in await client.chat(
                    model, user("hello"), stream=True, options=options
                )
            ]
            generated = await client.generate(model, "Once upon a time", options=options)
            listed = await client.list()
            running = await client.ps()
            shown = await client.show(model)
        finally:
            await client.close()  # type: ignore[no-untyped-call]
        async with httpx.AsyncClient() as http:
            raw_ps = (await http.get(f"{router.url}/api/ps")).json()["models"]
    assert whole.done is True
    assert whole.eval_count == 4
    assert whole.done_reason == "length"
    assert whole.total_duration
    assert "".join(part.message.content or "" for part in parts) == whole.message.content
    assert parts[-1].done is True
    assert parts[-1].done_reason == "length"
    # llama-cpp-python's server sends no usage on streams, so no eval_count (as Ollama
    # omits an unknown count); the split is the worker's own measurement
    assert parts[-1].eval_duration  # measured by the worker: this server reports no split
    assert generated.eval_count == 4
    # (this module's other fleet may still be on the bus: look for this node's model)
    assert model in [entry.model for entry in listed.models]
    kept = next(entry for entry in running.models if entry.model == model)
    # loaded until the server stops: Ollama's "forever" (keep_alive -1), never "expired"
    assert kept.expires_at is not None
    assert kept.expires_at.year > 2100
    assert {"model": model, "node": worker.node_id}.items() <= next(
        entry for entry in raw_ps if entry["node"] == worker.node_id
    ).items()
    assert shown.details is not None
    assert shown.details.format == "gguf"  # what discovery knows of a llama.cpp model
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities


async def test_with_api_keys_ollama_clients_send_the_key_as_a_bearer(
    start_router: RouterFactory,
) -> None:
    http = {"host": "127.0.0.1", "port": 0, "api_keys": ["ollama-key"]}
    async with (
        start_router(http=http) as router,
        ollama.AsyncClient(host=router.url) as anonymous,
        ollama.AsyncClient(
            host=router.url, headers={"Authorization": "Bearer ollama-key"}
        ) as keyed,
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            await anonymous.list()
        listed = await keyed.list()
    assert refused.value.status_code == 401
    assert "API key" in refused.value.error  # Ollama's `{"error": "..."}`, read by the client
    assert isinstance(listed.models, list)
