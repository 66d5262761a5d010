"""The worker in front of llama.cpp's own `llama-server`, played by the simulator
(`LlamaServerTraits`) so every behaviour runs in CI: path ids, `/props` slots and context,
the API key, the loading state, a model swapped under the worker.
tests/test_llama_server_binary.py checks the same against the real binary when given."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client as NatsClient

from services.capabilities import Capabilities, decode_capabilities
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, until
from tools.simulator import LlamaServerTraits, SimModel, Simulator

GGUF_PATH = "/srv/models/Tiny-Llama-Q4_K_M.gguf"


async def caps(nc: NatsClient, node_id: str) -> Capabilities:
    record = decode_capabilities((await nc.request(f"node.{node_id}.caps", b"", timeout=5)).data)
    assert record is not None
    return record


async def caps_until(
    nc: NatsClient, node_id: str, check: Any, timeout_s: float = 10
) -> Capabilities:
    """The node's record once `check(record)` holds (bounded wait)."""
    async with asyncio.timeout(timeout_s):
        while True:
            record = await caps(nc, node_id)
            if check(record):
                return record
            await asyncio.sleep(0.05)


def llama(url: str, **extra: Any) -> dict[str, Any]:
    return backend(url, kind="llamacpp", **extra)


async def test_a_path_id_is_served_under_its_file_stem_and_the_path_still_works(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    async with (
        Simulator([SimModel(GGUF_PATH)], llama_server=LlamaServerTraits(n_ctx=2048)) as sim,
        start_worker(backends=[llama(sim.url)]),
    ):
        record = await caps(nc, node_id)
        by_stem = await ask(nc, llm(node_id), {"model": "Tiny-Llama-Q4_K_M", "prompt": "hi"})
        by_path = await ask(nc, llm(node_id), {"model": GGUF_PATH, "prompt": "hi"})
    assert [model.name for model in record.served_models] == ["Tiny-Llama-Q4_K_M"]
    assert record.served_models[0].context_window == 2048  # meta.n_ctx, the slot's context
    assert (by_stem.status, by_stem.model) == ("ok", "Tiny-Llama-Q4_K_M")
    assert (by_path.status, by_path.model) == ("ok", "Tiny-Llama-Q4_K_M")
    assert sim.calls[GGUF_PATH] == 2  # the runtime is asked by its own id


async def test_capacity_follows_the_runtime_slots_capped_by_config(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    traits = LlamaServerTraits(total_slots=1)
    async with (
        Simulator([SimModel("tiny")], llama_server=traits, latency_ms=400) as one_slot,
        Simulator([SimModel("other")], llama_server=LlamaServerTraits(total_slots=8)) as eight,
        start_worker(backends=[llama(one_slot.url)], limits={"llm_concurrency": 4}),
    ):
        first = asyncio.create_task(ask(nc, llm(node_id), {"prompt": "slow"}))
        await until(lambda: one_slot.open_connections == 1)
        second = await ask(nc, llm(node_id), {"prompt": "no slot left"})
        record = await caps(nc, node_id)
        assert (await first).status == "ok"
        async with start_worker(
            node_id=f"{node_id}-two",
            backends=[llama(one_slot.url), llama(eight.url)],
            limits={"llm_concurrency": 4},
        ):
            two = await caps(nc, f"{node_id}-two")
    assert record.load["llm"].capacity == 1
    assert second.error is not None
    assert second.error.code == "BUSY"
    assert two.load["llm"].capacity == 4  # 1 + 8 slots, capped by llm_concurrency


async def test_a_swapped_model_is_listed_again_after_one_answer(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    async with (
        Simulator([SimModel("/m/first.gguf")], llama_server=LlamaServerTraits()) as sim,
        start_worker(backends=[llama(sim.url)], rediscover_s=3600),
    ):
        assert [m.name for m in (await caps(nc, node_id)).served_models] == ["first"]
        sim.replace_models([SimModel("/m/second.gguf")])  # restarted with another GGUF
        await ask(nc, llm(node_id), {"model": "first", "prompt": "who answers?"})
        record = await caps_until(
            nc, node_id, lambda r: [m.name for m in r.served_models] == ["second"]
        )
        gone = await ask(nc, llm(node_id), {"model": "first", "prompt": "again"})
    assert record.runtimes[0].state == "healthy"
    assert gone.error is not None
    assert gone.error.code == "MODEL_NOT_FOUND"


async def test_a_worker_without_the_api_key_shows_the_runtime_unhealthy_auth(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("TEST_LLAMA_KEY", "sesame")
    traits = LlamaServerTraits(api_key="sesame")
    async with Simulator([SimModel("tiny")], llama_server=traits) as sim:
        async with start_worker(backends=[llama(sim.url)]):
            without = await caps(nc, node_id)
        async with start_worker(backends=[llama(sim.url, api_key_env="TEST_LLAMA_KEY")]):
            with_key = await caps(nc, node_id)
            answer = await ask(nc, llm(node_id), {"prompt": "hi"})
    runtime = without.runtimes[0]
    assert (runtime.state, runtime.models) == ("unhealthy", 0)
    assert runtime.last_error is not None
    assert runtime.last_error.startswith("auth: ")
    assert "sesame" not in json.dumps(without.model_dump(mode="json"))
    assert [m.name for m in with_key.served_models] == ["tiny"]
    assert with_key.runtimes[0].state == "healthy"
    assert answer.status == "ok"


async def test_a_loading_runtime_is_loading_not_an_error_and_serves_once_loaded(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    traits = LlamaServerTraits(loading=True)
    async with (
        Simulator([SimModel("tiny")], llama_server=traits) as sim,
        start_worker(backends=[llama(sim.url)], heartbeat_s=0.2),
    ):
        loading = await caps(nc, node_id)
        traits.loading = False
        loaded = await caps_until(nc, node_id, lambda r: r.runtimes[0].state == "healthy")
        answer = await ask(nc, llm(node_id), {"prompt": "hi"})
    runtime = loading.runtimes[0]
    assert (runtime.state, runtime.models, runtime.last_error) == ("loading", 0, None)
    assert runtime.stats.errors == 0
    assert [m.name for m in loaded.served_models] == ["tiny"]
    assert answer.status == "ok"
