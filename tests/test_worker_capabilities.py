"""The node on the bus: the capabilities record as the fleet sees it, over real NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from node_worker.backends import next_state
from node_worker.config import Health
from services.bus import flush_interest
from services.capabilities import Capabilities, Pricing, decode_capabilities
from services.fleet_scan import collect_fleet
from services.subjects import Subjects
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, until
from tools.simulator import Fault, SimModel, Simulator


@asynccontextmanager
async def records(nc: NatsClient, node_id: str) -> AsyncIterator[list[Capabilities]]:
    """Every record the node publishes on ncs.capabilities.<id>, in arrival order."""
    seen: list[Capabilities] = []

    async def keep(msg: Msg) -> None:
        record = decode_capabilities(msg.data)
        if record is not None:
            seen.append(record)

    subscription = await nc.subscribe(f"ncs.capabilities.{node_id}", cb=keep)
    await flush_interest(nc)
    try:
        yield seen
    finally:
        await subscription.unsubscribe()


async def next_record(
    seen: list[Capabilities], match: Callable[[Capabilities], bool]
) -> Capabilities:
    await until(lambda: any(match(record) for record in seen), timeout_s=10)
    return next(record for record in seen if match(record))


def model_names(record: Capabilities) -> set[str]:
    return {model.name for model in record.served_models}


async def test_record_is_published_at_start_and_answers_caps(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with records(nc, node_id) as seen, start_worker(backends=[backend(simulator.url)]):
        first = await next_record(seen, lambda r: True)
        asked = decode_capabilities((await nc.request(f"node.{node_id}.caps", b"", timeout=5)).data)
    assert asked is not None
    for record in (first, asked):
        assert record.node_id == node_id
        assert model_names(record) == {"llama3:8b", "llava:7b"}
        assert record.load["llm"].capacity == 4
        assert record.runtimes[0].state == "healthy"
        assert record.runtimes[0].latency_ms is not None
        assert record.ttl_s > 0
    llava = next(m for m in first.served_models if m.name == "llava:7b")
    assert llava.type == "vision"  # from the runtime's /api/show capabilities
    assert llava.context_window == 8192
    assert llava.size_gb == 4.0


async def test_model_on_two_runtimes_is_served_by_the_higher_priority_one(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("shared:7b"), SimModel("only-ollama:1b")]) as ollama,
        Simulator(models=[SimModel("shared:7b")]) as vllm,
        start_worker(backends=[backend(ollama.url), backend(vllm.url, kind="vllm")]) as worker,
    ):
        record = worker.capabilities(seq=1)
        answer = await ask(nc, llm(node_id), {"prompt": "hi", "model": "shared:7b"})
    runtime_of = {model.name: model.runtime for model in record.served_models}
    assert runtime_of == {"shared:7b": "vllm", "only-ollama:1b": "ollama"}
    assert answer.runtime == "vllm"
    assert vllm.calls["shared:7b"] == 1
    assert ollama.calls["shared:7b"] == 0


async def test_dead_runtime_leaves_the_record_within_a_heartbeat_and_comes_back(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    gone = Simulator(models=[SimModel("flaky:3b")])
    await gone.start()
    async with (
        Simulator(models=[SimModel("steady:3b")]) as steady,
        records(nc, node_id) as seen,
        start_worker(
            backends=[backend(gone.url), backend(steady.url, kind="lmstudio")], heartbeat_s=0.2
        ),
    ):
        await next_record(seen, lambda r: model_names(r) == {"flaky:3b", "steady:3b"})
        await gone.stop()
        down = await next_record(seen, lambda r: model_names(r) == {"steady:3b"})
        await gone.start()  # same port: the runtime is back
        up = await next_record(seen, lambda r: r.seq > down.seq and "flaky:3b" in model_names(r))
        answer = await ask(nc, llm(node_id), {"prompt": "hi", "model": "flaky:3b"})
        await gone.stop()
    states = {runtime.kind: runtime.state for runtime in down.runtimes}
    assert states == {"ollama": "unhealthy", "lmstudio": "healthy"}
    assert next(r for r in down.runtimes if r.kind == "ollama").last_error
    assert {runtime.state for runtime in up.runtimes} == {"healthy"}
    assert answer.status == "ok"


async def test_a_runtime_that_cannot_be_configured_is_disabled_and_the_rest_serve(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    keyless = backend("http://127.0.0.1:9", kind="openai", api_key_env="INFERBUS_TEST_UNSET_KEY")
    async with start_worker(backends=[keyless, backend(simulator.url)]) as worker:
        record = worker.capabilities(seq=1)
        answer = await ask(nc, llm(node_id), {"prompt": "hi"})
    disabled = record.runtimes[0]
    assert disabled.state == "disabled"
    assert disabled.last_error is not None
    assert "INFERBUS_TEST_UNSET_KEY" in disabled.last_error
    assert answer.status == "ok"


async def test_pricing_gives_each_answer_its_cost_and_the_runtime_its_totals(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    priced = backend(
        simulator.url,
        pricing={"llama3:8b": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
    )
    async with start_worker(backends=[priced]) as worker:
        answer = await ask(nc, llm(node_id), {"prompt": "one two three", "model": "llama3:8b"})
        record = worker.capabilities(seq=1)
    assert answer.result is not None
    # 3 prompt tokens at 1.0/1M + 8 completion tokens at 2.0/1M
    assert answer.result.cost == pytest.approx(19e-6)
    stats = record.runtimes[0].stats
    assert (stats.invocations, stats.tokens_in, stats.tokens_out) == (1, 3, 8)
    assert stats.cost == pytest.approx(19e-6)
    llama = next(m for m in record.served_models if m.name == "llama3:8b")
    assert llama.pricing == Pricing(input_per_1m=1.0, output_per_1m=2.0)


async def test_a_full_node_is_announced_at_once_not_at_the_next_heartbeat(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("hang"))
    async with (
        records(nc, node_id) as seen,
        start_worker(
            backends=[backend(simulator.url)], limits={"llm_concurrency": 1}, heartbeat_s=600
        ),
    ):
        await next_record(seen, lambda r: True)
        job = asyncio.create_task(ask(nc, llm(node_id), {"prompt": "hi", "timeout_ms": 1500}))
        full = await next_record(seen, lambda r: r.load["llm"].inflight == 1)
        await job
        free = await next_record(seen, lambda r: r.seq > full.seq and r.load["llm"].inflight == 0)
    assert full.load["llm"].saturated
    assert not free.load["llm"].saturated


@pytest.mark.parametrize(
    ("probe_ok", "latency_ms", "recent_errors", "expected"),
    [
        (True, 5.0, 0, "healthy"),
        (True, 5_000.0, 0, "degraded"),
        (True, 5.0, 2, "degraded"),
        (True, 5.0, 5, "unhealthy"),
        (False, None, 0, "unhealthy"),
    ],
)
def test_health_state_after_a_probe(
    probe_ok: bool, latency_ms: float | None, recent_errors: int, expected: str
) -> None:
    policy = Health(degraded_latency_ms=1000, unhealthy_errors=5)
    state = next_state(
        probe_ok=probe_ok, latency_ms=latency_ms, recent_errors=recent_errors, policy=policy
    )
    assert state == expected


async def test_discover_collects_the_whole_fleet_in_one_round_trip(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    prefix = f"fleet{node_id.replace('-', '')}"  # no other test's worker answers here
    nodes = [f"{node_id}-{i}" for i in range(3)]
    async with (
        start_worker(node_id=nodes[0], subject_prefix=prefix, backends=[backend(simulator.url)]),
        start_worker(node_id=nodes[1], subject_prefix=prefix, backends=[backend(simulator.url)]),
        start_worker(node_id=nodes[2], subject_prefix=prefix, backends=[]),
    ):
        fleet = await collect_fleet(nc, Subjects(prefix))
    assert [record.node_id for record in fleet] == sorted(nodes)
    assert [len(record.served_models) for record in fleet] == [2, 2, 0]


async def test_a_runtime_healthy_again_carries_no_old_error(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("error", count=1))
    async with (
        records(nc, node_id) as seen,
        start_worker(backends=[backend(simulator.url)], heartbeat_s=0.2),
    ):
        failed = await ask(nc, llm(node_id), {"model": "llama3:8b", "prompt": "fail once"})
        marked = await next_record(seen, lambda r: r.runtimes[0].state == "degraded")
        healthy = await next_record(
            seen, lambda r: r.seq > marked.seq and r.runtimes[0].state == "healthy"
        )
    assert failed.status == "error"
    assert marked.runtimes[0].last_error is not None
    assert healthy.runtimes[0].last_error is None
