"""A node that dies or freezes while it holds the only job in flight.

Worker processes heartbeat every 10 s (a stale record would take 30 s), so within the
budgets here only the router's liveness probe can notice the node is gone.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.service import RouterService
from services.bus import wait_for_worker
from services.nats_server import NatsServer
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import llm, until
from tests.worker_process import worker_process
from tools.simulator import SimModel, Simulator

ROOT = Path(__file__).resolve().parent.parent
MODEL = "m:1b"


async def holding_the_job(sim: Simulator) -> None:
    await until(lambda: sim.open_connections >= 1, timeout_s=10)


@dataclass
class HeldJob:
    """A worker process holding the only job in flight, a second node ready beside it."""

    process: asyncio.subprocess.Process
    node: str
    runtime: Simulator
    router: RouterService
    http: httpx.AsyncClient
    answer: asyncio.Future[httpx.Response]
    other: str


@asynccontextmanager
async def a_node_holding_the_only_job(
    tmp_path: Path,
    nats_url: str,
    nc: Any,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node: str,
    runtime: Simulator,
) -> AsyncIterator[HeldJob]:
    async with (
        Simulator(models=[SimModel(MODEL)]) as fine,
        worker_process(tmp_path, node, nats_url, runtime.url) as process,
    ):
        await wait_for_worker(nc, llm(node))
        async with start_router() as router, httpx.AsyncClient(base_url=router.url) as http:
            await until(lambda: node in router.fleet.nodes)
            job = {"prompt": "x", "model": MODEL, "timeout_ms": 8000}
            answer = asyncio.ensure_future(http.post("/infer", json=job, timeout=20))
            await holding_the_job(runtime)
            other = f"{node}-other"
            async with start_worker(node_id=other, backends=[backend(fine.url)]):
                await until(lambda: other in router.fleet.nodes)
                yield HeldJob(process, node, runtime, router, http, answer, other)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
async def test_a_node_lost_while_holding_the_only_job_hands_it_on_and_is_told_to_cancel(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Any,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
    how: signal.Signals,
) -> None:
    """SIGKILL: its subscriptions vanish, the probe hears "no responders". SIGSTOP: the
    connection stays, the probes go unanswered; after SIGCONT the node gets the router's
    cancel and stops its runtime call (the job is not run twice)."""
    victim = f"{node_id}-victim"
    async with (
        Simulator(models=[SimModel(MODEL)], latency_ms=60_000) as stuck,
        a_node_holding_the_only_job(
            tmp_path, nats_server.url, nc, start_worker, start_router, victim, stuck
        ) as held,
    ):
        held.process.send_signal(how)
        answer = await held.answer
        if how == signal.SIGSTOP:
            held.process.send_signal(signal.SIGCONT)
        await until(lambda: stuck.open_connections == 0, timeout_s=5)
    body = answer.json()
    assert answer.status_code == 200, body
    assert body["route"]["node"] == held.other
    first = body["route"]["attempts"][0]
    assert (first["node"], first["outcome"]) == (victim, "BACKEND_UNAVAILABLE")


async def test_a_stream_cut_by_a_killed_node_ends_with_backend_unavailable(
    tmp_path: Path, nats_server: NatsServer, nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    victim = f"{node_id}-victim"
    async with (
        Simulator(models=[SimModel(MODEL)], tokens=200, token_interval_ms=100) as slow,
        worker_process(tmp_path, victim, nats_server.url, slow.url) as process,
    ):
        await wait_for_worker(nc, llm(victim))
        async with start_router() as router, httpx.AsyncClient(base_url=router.url) as http:
            await until(lambda: victim in router.fleet.nodes)
            job = {"prompt": "x", "model": MODEL, "timeout_ms": 30_000, "stream": True}
            lines: list[dict[str, Any]] = []
            async with http.stream("POST", "/infer", json=job, timeout=40) as response:
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 3:
                        process.send_signal(signal.SIGKILL)
    final = lines[-1]
    assert [line.get("delta") is not None for line in lines[:3]] == [True] * 3
    assert final["error"]["code"] == "BACKEND_UNAVAILABLE"
    assert "gone" in final["error"]["message"] or "no worker" in final["error"]["message"]


async def test_a_draining_node_finishes_the_job_it_holds_and_is_not_taken_for_dead(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Any,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
) -> None:
    """SIGTERM while it holds a job: it stops taking jobs and withdraws its models, but still
    answers the router's probes, so the job ends there, once, and its breaker stays closed;
    the next request goes to the other node."""
    leaving = f"{node_id}-leaving"
    async with (
        Simulator(models=[SimModel(MODEL)], latency_ms=1500) as slow,
        a_node_holding_the_only_job(
            tmp_path, nats_server.url, nc, start_worker, start_router, leaving, slow
        ) as held,
    ):
        held.process.send_signal(signal.SIGTERM)
        answer = await held.answer
        job = {"prompt": "x", "model": MODEL, "timeout_ms": 8000}
        following = await held.http.post("/infer", json=job, timeout=20)
        exit_code = await asyncio.wait_for(held.process.wait(), 20)
        breakers = held.router.health.breakers_of(leaving, held.router.fleet.clock())
    body = answer.json()
    assert answer.status_code == 200, body
    assert [attempt["node"] for attempt in body["route"]["attempts"]] == [leaving]
    assert slow.calls[MODEL] == 1
    assert following.json()["route"]["node"] == held.other
    assert "open" not in breakers.values()
    assert exit_code == 0
