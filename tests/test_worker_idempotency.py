"""Idempotency over real NATS: one runtime call per key, replays marked, mismatches refused."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NatsClient

from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, until
from tools.simulator import Fault, Simulator


async def test_concurrent_duplicates_share_one_runtime_call(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.latency_ms = 200
    job = {"idempotency_key": "order-42", "prompt": "summarise"}
    async with start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 1}):
        answers = await asyncio.gather(
            *(ask(nc, llm(node_id), {**job, "job_id": f"j{i}"}) for i in range(6))
        )
    assert simulator.calls["llama3:8b"] == 1
    assert all(a.status == "ok" for a in answers)  # duplicates wait; they are never BUSY
    assert len({a.result.text for a in answers if a.result}) == 1
    assert sorted(a.cached for a in answers) == [False, True, True, True, True, True]
    assert sorted(a.job_id for a in answers) == [f"j{i}" for i in range(6)]


async def test_repeat_after_completion_is_replayed_from_cache(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        first = await ask(nc, llm(node_id), {"job_id": "same", "prompt": "hi"})
        again = await ask(nc, llm(node_id), {"job_id": "same", "prompt": "hi"})
    assert first.cached is False
    assert again.cached is True
    assert again.result == first.result
    assert simulator.calls["llama3:8b"] == 1


async def test_same_key_with_different_payload_is_a_mismatch(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        await ask(nc, llm(node_id), {"idempotency_key": "k", "prompt": "one thing"})
        other = await ask(nc, llm(node_id), {"idempotency_key": "k", "prompt": "another"})
    assert other.error is not None
    assert other.error.code == "IDEMPOTENCY_MISMATCH"
    assert simulator.calls["llama3:8b"] == 1


async def test_mismatch_is_detected_while_the_first_job_is_still_running(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("hang"))
    async with start_worker(backends=[backend(simulator.url)]):
        first = asyncio.create_task(
            ask(nc, llm(node_id), {"idempotency_key": "k", "prompt": "one", "timeout_ms": 1000})
        )
        await until(lambda: simulator.open_connections > 0)
        other = await ask(nc, llm(node_id), {"idempotency_key": "k", "prompt": "two"})
        assert not first.done()
        await first
    assert other.error is not None
    assert other.error.code == "IDEMPOTENCY_MISMATCH"


async def test_transient_failures_are_not_cached(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("error", count=1))
    async with start_worker(backends=[backend(simulator.url)]):
        failed = await ask(nc, llm(node_id), {"job_id": "retry-me", "prompt": "hi"})
        retried = await ask(nc, llm(node_id), {"job_id": "retry-me", "prompt": "hi"})
    assert failed.error is not None
    assert failed.error.code == "BACKEND_ERROR"
    assert retried.status == "ok"
    assert retried.cached is False
    assert simulator.calls["llama3:8b"] == 2


async def test_busy_answers_are_not_cached(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.latency_ms = 300
    async with start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 1}):
        holder = asyncio.create_task(ask(nc, llm(node_id), {"prompt": "hold the slot"}))
        await until(lambda: simulator.open_connections > 0)
        busy = await ask(nc, llm(node_id), {"job_id": "later", "prompt": "hi"})
        await holder
        simulator.latency_ms = 0
        later = await ask(nc, llm(node_id), {"job_id": "later", "prompt": "hi"})
    assert busy.error is not None
    assert busy.error.code == "BUSY"
    assert later.status == "ok"
    assert later.cached is False


async def test_cache_holds_at_most_max_entries(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(
        backends=[backend(simulator.url)], idempotency={"max_entries": 2, "ttl_s": 600}
    ):
        for key in ("a", "b", "c"):
            await ask(nc, llm(node_id), {"job_id": key, "prompt": "hi"})
        evicted = await ask(nc, llm(node_id), {"job_id": "a", "prompt": "hi"})
        kept = await ask(nc, llm(node_id), {"job_id": "c", "prompt": "hi"})
    assert evicted.cached is False
    assert kept.cached is True
    assert simulator.calls["llama3:8b"] == 4


async def test_cached_entries_expire_after_ttl(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(
        backends=[backend(simulator.url)], idempotency={"ttl_s": 0.2, "max_entries": 100}
    ):
        await ask(nc, llm(node_id), {"job_id": "short-lived", "prompt": "hi"})
        await asyncio.sleep(0.4)
        again = await ask(nc, llm(node_id), {"job_id": "short-lived", "prompt": "hi"})
    assert again.cached is False
    assert simulator.calls["llama3:8b"] == 2


async def test_duplicate_with_more_budget_is_not_handed_a_replayed_failure(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("hang", count=1))
    job = {"idempotency_key": "k", "prompt": "hi"}
    async with start_worker(backends=[backend(simulator.url)]):
        short = asyncio.create_task(ask(nc, llm(node_id), {**job, "timeout_ms": 300}))
        await until(lambda: simulator.open_connections > 0)
        long = await ask(nc, llm(node_id), {**job, "timeout_ms": 5_000})
        retried = await ask(nc, llm(node_id), job)
    assert (await short).error is not None
    assert long.error is not None
    assert long.error.code == "DEADLINE_EXCEEDED"
    assert long.cached is False  # a failure is not presented as the key's answer
    assert retried.status == "ok"  # and it was not kept: the retry really runs
