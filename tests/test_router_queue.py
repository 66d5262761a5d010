"""The router's line end to end: real NATS, real workers, a slow simulator behind them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx

from router.service import RouterService
from tests.conftest import RouterFactory, WorkerFactory, backend
from tools.simulator import SimModel, Simulator

MODEL = "m:1b"


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


@asynccontextmanager
async def slow_fleet(
    start_worker: WorkerFactory, node_id: str, *, nodes: int, slots: int, latency_ms: float
) -> AsyncIterator[Simulator]:
    """`nodes` workers with `slots` llm slots each, all in front of one slow simulator."""
    async with AsyncExitStack() as stack:
        sim = await stack.enter_async_context(
            Simulator(models=[SimModel(MODEL)], latency_ms=latency_ms, tokens=4)
        )
        for n in range(nodes):
            await stack.enter_async_context(
                start_worker(
                    node_id=f"{node_id}-{n}",
                    backends=[backend(sim.url)],
                    limits={"llm_concurrency": slots},
                )
            )
        yield sim


def client(router: RouterService, key: str | None = None, timeout: float = 60) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=router.url, timeout=timeout, headers=headers)


async def test_twenty_calls_on_four_slots_all_answer_and_the_runtime_never_sees_five(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        slow_fleet(start_worker, node_id, nodes=2, slots=2, latency_ms=400) as sim,
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
