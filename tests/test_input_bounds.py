"""No input stalls a node: the bounds every receiver applies (services/bounds.py), at the
router's HTTP edge and on a worker reached straight over NATS, and answers too big for
the bus refused as PAYLOAD_TOO_LARGE at once."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from services.big_json import decode_job
from services.bounds import (
    MAX_DIMENSIONS,
    MAX_EMBED_INPUTS,
    MAX_JSON_CONTAINERS,
    MAX_MESSAGES,
    MAX_TOKENS,
    MAX_TOOLS,
)
from services.nats_server import NatsServer
from services.wire import JobRequest, JobResponse, decode_request
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import ask, until
from tools.simulator import SimModel, Simulator

EMBEDDER = "nomic-embed-text"
BUS_LIMIT = 8 * 1024 * 1024


def embed(node_id: str) -> str:
    return f"node.{node_id}.embed.request"


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def many(count: int) -> list[str]:
    return [f"i{index}" for index in range(count)]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"input": many(MAX_EMBED_INPUTS + 1)}, "input"),
        ({"input": many(200_000)}, "input"),
        ({"input": "x", "dimensions": MAX_DIMENSIONS + 1}, "params.dimensions"),
        ({"input": "x", "dimensions": 2**70}, "params.dimensions"),
        ({"prompt": "x", "max_tokens": 2**64}, "params.max_tokens"),
        ({"prompt": "x", "max_completion_tokens": MAX_TOKENS + 1}, "params.max_completion_tokens"),
        ({"prompt": "x", "stop": ["s"] * 1_000}, "params.stop"),
        ({"prompt": "x", "params": {"stop": "s" * 257}}, "params.stop"),
        ({"prompt": "x", "stop": ["ok", "s" * 10_000]}, "params.stop"),
        ({"messages": [{"content": "x"}] * (MAX_MESSAGES + 1)}, "messages"),
        ({"messages": [{"content": "x"}] * 200_000}, "messages"),
        ({"messages": [{"content": [{"type": "text", "text": "x"}] * 8193}]}, "messages"),
        ({"messages": [{"role": "assistant", "tool_calls": [CALL] * 8193}]}, "messages"),
        ({"prompt": "x", "tools": [TOOL] * (MAX_TOOLS + 1)}, "tools"),
    ],
)
def test_an_input_beyond_its_bound_is_a_bad_request_naming_the_field(
    fields: dict[str, Any], named: str
) -> None:
    decoded = decode_request(json.dumps(fields).encode(), default_type="embed")
    assert isinstance(decoded, JobResponse)
    assert decoded.error is not None
    assert decoded.error.code == "BAD_REQUEST"
    assert decoded.error.message.startswith(f"{named}: "), decoded.error.message


@pytest.mark.parametrize(
    "fields",
    [
        {"input": many(MAX_EMBED_INPUTS)},
        {"input": "x", "dimensions": MAX_DIMENSIONS},
        {"prompt": "x", "max_tokens": MAX_TOKENS},
        {"prompt": "x", "stop": ["s" * 256] * 16},
        {"prompt": "x", "stop": "\n\n"},
        {"messages": [{"content": [{"type": "text", "text": "x"}] * 2}] * MAX_MESSAGES},
        {"prompt": "x", "tools": [TOOL] * MAX_TOOLS},
    ],
)
def test_an_input_at_its_bound_is_taken(fields: dict[str, Any]) -> None:
    assert isinstance(decode_request(json.dumps(fields).encode(), default_type="embed"), JobRequest)


@pytest.mark.parametrize(
    "extra",
    [
        {"nested": [[[[[[]]]]]] * 200_000},
        {"schema": {f"p{index}": {"type": "string"} for index in range(MAX_JSON_CONTAINERS)}},
    ],
)
async def test_a_job_of_more_json_containers_than_the_bound_is_a_bad_request(
    extra: dict[str, Any],
) -> None:
    """Free-form fields (`extra`, a JSON schema) hold any JSON: the whole job is bounded."""
    decoded = await decode_job(
        json.dumps({"prompt": "x", "extra": extra}).encode(), default_type="llm"
    )
    assert isinstance(decoded, JobResponse)
    assert decoded.error is not None
    assert decoded.error.code == "BAD_REQUEST"
    assert f"more than {MAX_JSON_CONTAINERS} objects and arrays" in decoded.error.message


async def test_a_big_job_within_the_bounds_decodes_as_json_loads_would() -> None:
    fields = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"part {n}"}]}
            for n in range(2_000)
        ],
        "extra": {"schema": {"nested": [[1, 2.5, None, True, "x\u00e9\n"]] * 3, "empty": {}}},
        "params": {"stop": ["a", "b"]},
    }
    data = json.dumps(fields, indent=1).encode()
    decoded = await decode_job(data, default_type="llm")
    assert isinstance(decoded, JobRequest)
    at_once = decode_request(data, default_type="llm")
    assert decoded.model_dump(exclude={"job_id"}) == at_once.model_dump(exclude={"job_id"})
    assert decoded.extra == fields["extra"]


@pytest.fixture
async def big_bus(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A server whose messages may be 8 MiB (as ops/nats/single.conf sets)."""
    config = tmp_path / "big.conf"
    config.write_text("max_payload: 8MB\n")
    async with NatsServer(config_file=config) as server:
        yield server


@pytest.fixture
async def embedder() -> AsyncIterator[Simulator]:
    model = SimModel(EMBEDDER, embedding=True, chat=False, embedding_dimensions=512)
    async with Simulator(models=[model]) as sim:
        yield sim


@pytest.mark.parametrize(
    ("kind", "job", "named"),
    [
        ("embed", {"input": many(200_000)}, "input"),
        ("embed", {"input": "x", "dimensions": 2**70}, "params.dimensions"),
        ("llm", {"model": "llama3:8b", "prompt": "x", "max_tokens": 2**64}, "params.max_tokens"),
        ("llm", {"model": "llama3:8b", "prompt": "x", "stop": ["s"] * 1_000}, "params.stop"),
    ],
)
async def test_a_worker_reached_over_nats_refuses_what_the_router_refuses_naming_the_field(
    big_bus: NatsServer,
    start_worker: WorkerFactory,
    embedder: Simulator,
    simulator: Simulator,
    node_id: str,
    kind: str,
    job: dict[str, Any],
    named: str,
) -> None:
    async with (
        start_worker(
            nats_url=[big_bus.url], backends=[backend(embedder.url), backend(simulator.url)]
        ),
        await nats.connect(big_bus.url) as nc,
    ):
        answer = await ask(nc, f"node.{node_id}.{kind}.request", job)
        caps = await nc.request(f"node.{node_id}.caps", b"", timeout=5)
    assert answer.error is not None
    assert answer.error.code == "BAD_REQUEST"
    assert answer.error.message.startswith(f"{named}: "), answer.error.message
    assert embedder.calls[EMBEDDER] == 0
    assert simulator.calls["llama3:8b"] == 0
    assert node_id.encode() in caps.data


@pytest.mark.parametrize("dimensions", [MAX_DIMENSIONS, 1_024])
async def test_an_embedding_that_cannot_fit_the_bus_is_refused_before_the_runtime(
    big_bus: NatsServer,
    start_worker: WorkerFactory,
    embedder: Simulator,
    node_id: str,
    dimensions: int,
) -> None:
    """2,048 vectors of 1,024 numbers take at least 8.4 MB: over an 8 MiB bus."""
    async with (
        start_worker(nats_url=[big_bus.url], backends=[backend(embedder.url)]),
        await nats.connect(big_bus.url) as nc,
    ):
        job = {"input": many(MAX_EMBED_INPUTS), "dimensions": dimensions}
        answer = await ask(nc, embed(node_id), job)
    assert answer.error is not None
    assert answer.error.code == "PAYLOAD_TOO_LARGE"
    assert "fewer dimensions" in answer.error.message
    assert embedder.calls[EMBEDDER] == 0


async def test_an_answer_over_the_bus_is_413_and_one_that_fits_arrives_whole(
    big_bus: NatsServer, start_worker: WorkerFactory, embedder: Simulator, node_id: str
) -> None:
    """The model's own width (512, no `dimensions` asked) is known only from its answer:
    2,048 vectors of 512 numbers are ~10 MB as JSON, over the bus; 128 each fit."""
    async with (
        start_worker(nats_url=[big_bus.url], backends=[backend(embedder.url)]),
        await nats.connect(big_bus.url) as nc,
    ):
        too_big = await ask(nc, embed(node_id), {"input": many(MAX_EMBED_INPUTS)}, timeout_s=60)
        fits = await ask(
            nc, embed(node_id), {"input": many(MAX_EMBED_INPUTS), "dimensions": 128}, timeout_s=60
        )
    assert too_big.error is not None
    assert too_big.error.code == "PAYLOAD_TOO_LARGE", too_big.error
    assert fits.status == "ok", fits.error
    assert fits.result is not None
    assert fits.result.embeddings is not None
    assert [len(vector) for vector in fits.result.embeddings] == [128] * MAX_EMBED_INPUTS


@pytest.mark.parametrize(
    ("dimensions", "runtime_calls"),
    [
        (1_024, 0),  # 2,048 x 1,024 numbers cannot fit: refused before the runtime
        (None, 1),  # the model's own width (512) is known from its answer: ~10 MB
    ],
)
async def test_the_router_answers_413_for_embeddings_that_cannot_fit_the_bus(
    big_bus: NatsServer,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    embedder: Simulator,
    node_id: str,
    dimensions: int | None,
    runtime_calls: int,
) -> None:
    body: dict[str, Any] = {"model": EMBEDDER, "input": many(MAX_EMBED_INPUTS)}
    if dimensions is not None:
        body["dimensions"] = dimensions
    async with (
        start_worker(nats_url=[big_bus.url], backends=[backend(embedder.url)]),
        start_router(nats_url=[big_bus.url]) as router,
        httpx.AsyncClient(base_url=router.url, timeout=60) as http,
    ):
        assert router.fleet is not None
        fleet = router.fleet
        await until(lambda: node_id in fleet.nodes, timeout_s=10)
        answer = await http.post("/v1/embeddings", json=body)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert embedder.calls[EMBEDDER] == runtime_calls


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", {"model": EMBEDDER, "input": many(200_000)}, "input"),
        ("/v1/embeddings", {"model": EMBEDDER, "input": "x", "dimensions": 2**70}, "dimensions"),
        (
            "/v1/chat/completions",
            {"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}],
             "max_tokens": 2**64},
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            {"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}],
             "stop": ["s"] * 1_000},
            "stop",
        ),
        (
            "/v1/chat/completions",
            {"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}],
             "metadata": {"nested": [[[]]] * 200_000}},
            None,
        ),
    ],
)  # fmt: skip
async def test_the_router_refuses_an_input_beyond_its_bound_with_400_at_once(
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    embedder: Simulator,
    simulator: Simulator,
    node_id: str,
    path: str,
    body: dict[str, Any],
    param: str | None,
) -> None:
    async with (
        start_worker(backends=[backend(embedder.url), backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        assert router.fleet is not None
        fleet = router.fleet
        await until(lambda: node_id in fleet.nodes, timeout_s=10)
        started = time.perf_counter()
        answer = await http.post(path, json=body)
        took_s = time.perf_counter() - started
    print(f"{path}: {answer.status_code} in {took_s * 1000:.0f} ms")
    assert answer.status_code == 400, answer.text
    if param is not None:
        assert answer.json()["error"]["param"] == param
    assert embedder.calls[EMBEDDER] == 0
    assert simulator.calls["llama3:8b"] == 0
