"""The router's line end to end: real NATS, real workers, a slow simulator behind them.

Where a test needs the fleet full at a known moment, it fills the slots with jobs sent
straight to the worker over NATS that the simulator never answers (a `hang` fault), and
frees them by cancelling those jobs on the node (`node.<id>.cancel`): the worker
announces the freed slot, and the router's line wakes on that record.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient

from node_worker.worker import Worker
from router.selection.select import Selection
from router.service import RouterService
from router.serving.call import Calls
from services.wire import JobRequest
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import llm, until
from tools.simulator import Fault, SimModel, Simulator

MODEL = "m:1b"


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


@asynccontextmanager
async def slow_fleet(
    start_worker: WorkerFactory, node_id: str, *, nodes: int, slots: int, latency_ms: float
) -> AsyncIterator[tuple[Simulator, list[Worker]]]:
    """`nodes` workers with `slots` llm slots each, all in front of one slow simulator."""
    async with AsyncExitStack() as stack:
        sim = await stack.enter_async_context(
            Simulator(models=[SimModel(MODEL)], latency_ms=latency_ms, tokens=4)
        )
        workers = [
            await stack.enter_async_context(
                start_worker(
                    node_id=f"{node_id}-{n}",
                    backends=[backend(sim.url)],
                    limits={"llm_concurrency": slots},
                    heartbeat_s=30,
                )
            )
            for n in range(nodes)
        ]
        yield sim, workers


def client(router: RouterService, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=300)
    return httpx.AsyncClient(base_url=router.url, timeout=60, headers=headers, limits=limits)


class Holders:
    """The node's slots taken by jobs sent to it by hand, which the runtime never answers."""

    def __init__(self, nc: NatsClient, node: str) -> None:
        self._nc = nc
        self._node = node
        self._job_ids: list[str] = []
        self._pending: list[asyncio.Future[Any]] = []

    async def take(self, sim: Simulator, worker: Worker, router: RouterService, count: int) -> None:
        sim.set_fault(MODEL, Fault("hang", count=count))
        for _ in range(count):
            job_id = uuid.uuid4().hex
            job = {"job_id": job_id, "prompt": "hold", "model": MODEL, "timeout_ms": 60_000}
            self._job_ids.append(job_id)
            request = self._nc.request(llm(self._node), json.dumps(job).encode(), timeout=60)
            self._pending.append(asyncio.ensure_future(request))
        await until(lambda: worker.admission.load()["llm"].inflight == count)
        index = router.router.fleet.index
        await until(lambda: index.load(self._node, "llm")[0] >= count)  # its record came

    async def free(self) -> None:
        for job_id in self._job_ids:
            await self._nc.publish(
                f"node.{self._node}.cancel", json.dumps({"job_id": job_id}).encode()
            )
        await asyncio.gather(*self._pending, return_exceptions=True)


async def queued(http: httpx.AsyncClient, count: int) -> None:
    """Wait (bounded) until at least `count` calls wait in the router's line."""
    async with asyncio.timeout(20):
        while True:
            total: int = (await http.get("/queue")).json()["total"]
            if total >= count:
                return
            await asyncio.sleep(0.05)


TENANTS = [
    {"name": "one", "key": "key-one", "weight": 1, "priority": "batch"},
    {"name": "two", "key": "key-two", "weight": 2, "priority": "batch"},
    {"name": "four", "key": "key-four", "weight": 4, "priority": "batch"},
    {"name": "app", "key": "key-app", "priority": "interactive"},
    {"name": "small", "key": "key-small", "max_queued": 2},
    {"name": "rpm", "key": "key-rpm", "rpm": 2},
    {"name": "tpm", "key": "key-tpm", "tpm": 5},
]


def tenants_router(start_router: RouterFactory, **extra: Any) -> Any:
    return start_router(http={"host": "127.0.0.1", "port": 0, "api_keys": TENANTS}, **extra)


async def test_twenty_calls_on_four_slots_all_answer_and_the_runtime_never_sees_five(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        slow_fleet(start_worker, node_id, nodes=2, slots=2, latency_ms=400) as (sim, _),
        start_router() as router,
        client(router) as http,
    ):
        answers = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=chat(f"q{n}")) for n in range(20))
        )
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert sim.peak_connections == 4
    waited = [int(a.headers["x-inferbus-queue-ms"]) for a in answers]
    assert sum(1 for ms in waited if ms > 0) >= 12  # most waited their turn in the line
    assert max(a.json()["route"]["queue_ms"] for a in answers) > 0


async def test_tenants_weighted_one_two_four_are_served_in_that_proportion(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str, nc: NatsClient
) -> None:
    backlog = {"one": 15, "two": 25, "four": 45}
    finished: list[str] = []
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=2, latency_ms=60) as (sim, [worker]),
        tenants_router(start_router) as router,
        client(router, "key-app") as http,
    ):
        holders = Holders(nc, f"{node_id}-0")
        await holders.take(sim, worker, router, 2)

        async def ask(tenant: str) -> int:
            headers = {"Authorization": f"Bearer key-{tenant}"}
            answer = await http.post("/v1/chat/completions", json=chat(tenant), headers=headers)
            finished.append(tenant)
            return answer.status_code

        calls = [asyncio.ensure_future(ask(t)) for t, n in backlog.items() for _ in range(n)]
        await queued(http, sum(backlog.values()))
        await holders.free()
        statuses = await asyncio.gather(*calls)
    assert statuses == [200] * len(calls)
    served = Counter(finished[:56])  # 8 rounds of 1 + 2 + 4, every tenant still waiting
    for tenant, share in (("one", 8), ("two", 16), ("four", 32)):
        assert abs(served[tenant] - share) <= share * 0.15, served


async def test_an_interactive_call_behind_fifty_batch_calls_starts_at_the_next_free_slot(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str, nc: NatsClient
) -> None:
    finished: list[str] = []
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=1, latency_ms=20) as (sim, [worker]),
        tenants_router(start_router) as router,
        client(router, "key-app") as http,
    ):
        holders = Holders(nc, f"{node_id}-0")
        await holders.take(sim, worker, router, 1)

        async def ask(key: str) -> None:
            headers = {"Authorization": f"Bearer {key}"}
            answer = await http.post("/v1/chat/completions", json=chat(), headers=headers)
            assert answer.status_code == 200, answer.text
            finished.append(key)

        batch = [asyncio.ensure_future(ask("key-one")) for _ in range(50)]
        await queued(http, 50)
        urgent = asyncio.ensure_future(ask("key-app"))
        await queued(http, 51)
        listed = (await http.get("/queue")).json()["waiting"]
        await holders.free()
        await asyncio.gather(urgent, *batch)
    assert finished[0] == "key-app"
    assert {row["class"] for row in listed} == {"batch", "interactive"}
    assert set(listed[0]) == {"tenant", "class", "model", "type", "age_ms"}  # no content


async def test_a_waiting_call_leaves_at_its_deadline_and_never_reaches_the_runtime(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str, nc: NatsClient
) -> None:
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=1, latency_ms=20) as (sim, [worker]),
        start_router() as router,
        client(router) as http,
    ):
        holders = Holders(nc, f"{node_id}-0")
        await holders.take(sim, worker, router, 1)
        started = time.perf_counter()
        answer = await http.post("/infer", json={"prompt": "x", "model": MODEL, "timeout_ms": 800})
        elapsed_s = time.perf_counter() - started
        runtime_calls = sim.calls[MODEL]
        await holders.free()
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    assert answer.json()["route"]["queue_ms"] >= 700
    assert 0.7 <= elapsed_s < 0.8 + 2.0  # at its budget; the margin is for a loaded box
    assert runtime_calls == 1  # the holder only


async def test_a_full_queue_turns_calls_away_with_retry_after(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str, nc: NatsClient
) -> None:
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=1, latency_ms=20) as (sim, [worker]),
        tenants_router(start_router) as router,
        client(router, "key-small") as http,
    ):
        holders = Holders(nc, f"{node_id}-0")
        await holders.take(sim, worker, router, 1)
        waiting = [asyncio.ensure_future(http.post("/infer", json=chat())) for _ in range(2)]
        await queued(http, 2)
        full = await http.post("/infer", json=chat())
        openai_full = await http.post("/v1/chat/completions", json=chat())
        await holders.free()
        served = await asyncio.gather(*waiting)
    assert full.status_code == 429, full.text
    error = full.json()["error"]
    assert error["code"] == "BUSY"
    assert "max_queued" in error["message"]
    assert error["retry_after_ms"] >= 100
    assert int(full.headers["retry-after"]) >= 1
    assert openai_full.status_code == 429
    assert "retry-after" in openai_full.headers
    assert [a.status_code for a in served] == [200, 200]


async def test_rpm_and_tpm_limits_turn_calls_away_naming_the_limit(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    job = {"prompt": "x", "model": "llama3:8b", "params": {"max_tokens": 4}}
    async with (
        start_worker(backends=[backend(simulator.url)]),
        tenants_router(start_router) as router,
        client(router, "key-rpm") as rpm,
        client(router, "key-tpm") as tpm,
    ):
        within = [await rpm.post("/infer", json=job) for _ in range(2)]
        over_rpm = await rpm.post("/infer", json=job)
        first = await tpm.post("/infer", json=job)  # 1 prompt + 4 completion tokens
        over_tpm = await tpm.post("/infer", json=job)
        metrics = (await rpm.get("/metrics")).text
    assert [a.status_code for a in within] == [200, 200]
    assert over_rpm.status_code == 429
    assert over_rpm.json()["error"]["message"].startswith("rpm:")
    assert over_rpm.json()["error"]["reason"] == "rate_limited"
    assert 55 <= int(over_rpm.headers["retry-after"]) <= 60  # the oldest ages out of the minute
    assert first.status_code == 200
    assert over_tpm.status_code == 429
    assert over_tpm.json()["error"]["message"].startswith("tpm:")
    assert 'inferbus_router_rejections_total{reason="rpm"} 1.0' in metrics
    assert 'inferbus_router_tenant_tokens_total{kind="completion",tenant="tpm"} 4.0' in metrics


async def test_a_client_that_leaves_while_queued_never_reaches_a_worker(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str, nc: NatsClient
) -> None:
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=1, latency_ms=20) as (sim, [worker]),
        start_router() as router,
        client(router) as http,
    ):
        holders = Holders(nc, f"{node_id}-0")
        await holders.take(sim, worker, router, 1)
        async with httpx.AsyncClient(base_url=router.url, timeout=60) as leaving:
            gone = asyncio.ensure_future(leaving.post("/infer", json=chat("leaving")))
            await queued(http, 1)
            gone.cancel()
        await until(lambda: router.admission.waiting == 0)
        await holders.free()
        after = await http.post("/infer", json=chat("after"))  # the slot is free again
        calls = sim.calls[MODEL]
    assert after.status_code == 200
    assert calls == 2  # the holder and `after`: never the call that left


async def test_a_waiting_stream_hears_keepalives_then_its_answer(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str, nc: NatsClient
) -> None:
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=1, latency_ms=20) as (sim, [worker]),
        start_router(admission={"keepalive_ms": 100}) as router,
        client(router) as http,
    ):
        holders = Holders(nc, f"{node_id}-0")
        await holders.take(sim, worker, router, 1)
        body = chat(stream=True)
        streamed = asyncio.ensure_future(http.post("/v1/chat/completions", json=body))
        await queued(http, 1)
        await asyncio.sleep(0.3)
        await holders.free()
        answer = await streamed
    assert answer.status_code == 200
    assert answer.text.startswith(": waiting for a slot\n\n")
    assert answer.text.rstrip().endswith("data: [DONE]")


async def test_a_waiting_infer_stream_hears_waiting_lines_then_its_answer(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str, nc: NatsClient
) -> None:
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=1, latency_ms=20) as (sim, [worker]),
        start_router(admission={"keepalive_ms": 100}) as router,
        client(router) as http,
    ):
        holders = Holders(nc, f"{node_id}-0")
        await holders.take(sim, worker, router, 1)
        body = {"prompt": "x", "model": MODEL, "stream": True, "job_id": "waits"}
        lines: list[dict[str, Any]] = []

        async def read() -> int:
            async with http.stream("POST", "/infer", json=body) as answer:
                async for line in answer.aiter_lines():
                    lines.append(json.loads(line))
                return answer.status_code

        streamed = asyncio.ensure_future(read())
        await until(lambda: len(lines) >= 2, 20)  # heard while it waits, before any token
        await holders.free()
        status = await streamed
    waiting = [line for line in lines if line.get("waiting")]
    pieces = [line for line in lines if "delta" in line]
    assert status == 200
    assert lines[: len(waiting)] == waiting  # every keep-alive comes before the answer
    assert all(set(line) == {"job_id", "waiting", "queue_ms"} for line in waiting)
    assert all(line["job_id"] == "waits" for line in waiting)
    assert [line["queue_ms"] for line in waiting] == sorted(line["queue_ms"] for line in waiting)
    assert "".join(line["delta"] for line in pieces)
    assert lines[-1]["done"] is True
    assert lines[-1]["status"] == "ok"
    assert lines[-1]["route"]["queue_ms"] > 0


async def test_two_routers_sharing_four_slots_answer_forty_calls(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        slow_fleet(start_worker, node_id, nodes=2, slots=2, latency_ms=200) as (sim, _),
        start_router() as first,
        start_router() as second,
        client(first) as one,
        client(second) as two,
    ):
        answers = await asyncio.gather(
            *(
                (one if n % 2 else two).post("/v1/chat/completions", json=chat(f"q{n}"))
                for n in range(40)
            )
        )
    assert [a.status_code for a in answers] == [200] * 40, [
        a.text for a in answers if a.status_code != 200
    ]
    assert sim.peak_connections <= 4


async def test_two_routers_sharing_limits_cannot_exceed_a_tenants_rpm_together(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """Shared rpm counts per wall-clock minute: the test keeps clear of a minute's end."""
    seconds_into_minute = time.time() % 60
    if seconds_into_minute > 50:
        await asyncio.sleep(61 - seconds_into_minute)
    limits = {"shared": True, "bucket": f"limits_{uuid.uuid4().hex[:12]}"}
    tenants = [{"name": "shared", "key": "key-shared", "rpm": 3}]
    http_settings = {"host": "127.0.0.1", "port": 0, "api_keys": tenants}
    job = {"prompt": "x", "model": "llama3:8b"}
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router(http=http_settings, limits=limits) as first,
        start_router(http=http_settings, limits=limits) as second,
        client(first, "key-shared") as one,
        client(second, "key-shared") as two,
    ):
        answers = [await (one if n % 2 else two).post("/infer", json=job) for n in range(6)]
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 429, 429, 429]
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.json()["error"]["message"].startswith("rpm:") for a in refused)
    assert all(int(a.headers["retry-after"]) <= 60 for a in refused)


async def test_two_routers_counting_at_once_grant_a_shared_rpm_exactly(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """Twelve calls at once, six per router, against rpm 5: each router counts the calls
    that arrive together in one write, and the two race for the counter."""
    seconds_into_minute = time.time() % 60
    if seconds_into_minute > 50:
        await asyncio.sleep(61 - seconds_into_minute)
    limits = {"shared": True, "bucket": f"limits_{uuid.uuid4().hex[:12]}"}
    tenants = [{"name": "shared", "key": "key-shared", "rpm": 5}]
    http_settings = {"host": "127.0.0.1", "port": 0, "api_keys": tenants}
    job = {"prompt": "x", "model": "llama3:8b"}
    async with (
        start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 12}),
        start_router(http=http_settings, limits=limits) as first,
        start_router(http=http_settings, limits=limits) as second,
        client(first, "key-shared") as one,
        client(second, "key-shared") as two,
    ):
        await until(lambda: first.admission.shared is not None, 10)
        await until(lambda: second.admission.shared is not None, 10)
        answers = await asyncio.gather(
            *((one if n % 2 else two).post("/infer", json=job) for n in range(12))
        )
    assert sorted(a.status_code for a in answers) == [200] * 5 + [429] * 7
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.json()["error"]["message"].startswith("rpm:") for a in refused)


async def test_a_call_that_did_not_wait_goes_to_the_node_its_lane_was_picked_on(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """The line selects once for a call's lane; the dispatcher's first attempt goes to
    that pick instead of selecting again (where a second draw could land elsewhere)."""
    async with (
        slow_fleet(start_worker, node_id, nodes=2, slots=4, latency_ms=0) as _,
        start_router() as router,
    ):
        index = router.router.fleet.index
        await until(lambda: {f"{node_id}-0", f"{node_id}-1"} <= set(index.nodes))
        calls = Calls(10_000, clock=time.monotonic)
        picked = Selection(model=MODEL, type="llm", source="fleet", node=f"{node_id}-1")
        served = []
        for n in range(12):
            job = JobRequest.model_validate(
                {"model": MODEL, "prompt": f"q{n}", "type": "llm", "idempotency_key": f"k{n}"}
            )
            call = replace(calls.make(job, tenant="t"), pick=picked)
            response, route = await router.router.dispatch(call)
            assert response.status == "ok", response.error
            served.append(route.node)
    assert served == [f"{node_id}-1"] * 12


async def test_a_served_call_leaves_no_cyclic_garbage(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """A call, its job and its HTTP request are freed when the answer is out, not left
    for the garbage collector (a cycle through them made the collector a large share of
    the router's CPU)."""
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=4, latency_ms=0) as _,
        start_router() as router,
        client(router) as http,
    ):
        await until(lambda: f"{node_id}-0" in router.router.fleet.index.nodes)
        for n in range(3):  # warm: first-use caches
            assert (await http.post("/v1/chat/completions", json=chat(f"w{n}"))).status_code == 200
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for n in range(5):
                for stream in (False, True):
                    body = chat(f"q{n}", stream=stream)
                    assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert not {"Call", "CallProgress"} & set(left)  # the router's own (the worker runs here too)
