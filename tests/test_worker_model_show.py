"""`node.<id>.show`: a worker describes a model it serves, from its runtime, in Ollama's
ShowResponse shape; one reply per request whatever it holds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from tests.conftest import WorkerFactory, backend
from tools.simulator import SimModel, Simulator


async def show(nc: NatsClient, node_id: str, body: bytes) -> dict[str, Any]:
    reply = await nc.request(f"node.{node_id}.show", body, timeout=5)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def test_an_ollama_runtime_answers_its_own_show(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        answer = await show(nc, node_id, b'{"model": "llava:7b"}')
    assert answer["model"] == "llava:7b"
    shown = answer["show"]
    assert "vision" in shown["capabilities"]
    assert shown["details"]["family"] == "llama"
    assert shown["model_info"]["llama.context_length"] == 8192
    assert "modelfile" in shown  # Ollama's own fields pass through


async def test_an_openai_compatible_runtime_is_described_from_discovery(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    models = [SimModel("mistral:7b"), SimModel("bge-m3", embedding=True, chat=False)]
    async with (
        Simulator(models=models) as sim,
        start_worker(backends=[backend(sim.url, kind="vllm")]),
    ):
        chat = (await show(nc, node_id, b'{"model": "mistral:7b"}'))["show"]
        embed = (await show(nc, node_id, b'{"model": "bge-m3"}'))["show"]
    assert "completion" in chat["capabilities"]  # and what the name says (tools)
    assert embed["capabilities"] == ["embedding"]
    assert chat["details"]["parameter_size"] == ""
    assert isinstance(chat["model_info"], dict)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model": "nope:1b"}', "MODEL_NOT_FOUND"),
        (b"not json", "BAD_REQUEST"),
        (b'{"verbose": true}', "BAD_REQUEST"),
    ],
)
async def test_every_request_gets_one_reply(
    nc: NatsClient,
    simulator: Simulator,
    start_worker: WorkerFactory,
    node_id: str,
    body: bytes,
    code: str,
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        answer = await show(nc, node_id, body)
    assert answer["error"]["code"] == code
    assert "show" not in answer


async def test_answers_are_kept_until_the_next_listing(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("m:1b", family="llama")]) as sim,
        start_worker(backends=[backend(sim.url)], rediscover_s=0.001) as worker,
    ):
        first = (await show(nc, node_id, b'{"model": "m:1b"}'))["show"]
        sim.replace_models([SimModel("m:1b", family="qwen3")])
        kept = (await show(nc, node_id, b'{"model": "m:1b"}'))["show"]
        await worker.refresh()  # the next listing: a new catalog
        fresh = (await show(nc, node_id, b'{"model": "m:1b"}'))["show"]
    assert first["details"]["family"] == kept["details"]["family"] == "llama"
    assert fresh["details"]["family"] == "qwen3"
