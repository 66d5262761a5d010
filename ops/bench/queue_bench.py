"""The router's line under load: how soon a freed slot is used, what the line costs when
nothing waits, and the fair share it achieves.

All in this process on loopback: a nats-server, the runtime simulator (answers after
`--latency-ms`), two node workers with two llm slots each in front of it, the router.

  gap        the fleet saturated (`--concurrency` callers, 4 slots): from a job of the
             router's own giving its slot back to the next waiting call's job taking one
             (the fleet view's own start and end events), p50/p99
  c=1        sequential calls with the line on, and off (`admission.max_wait_ms: 0`, so
             no call ever waits) in the same run: p50/p99 through the router; the
             difference is what the line costs a call that does not wait
  fairness   three tenants of weights 1, 2 and 4 (one class) each keep a backlog; the
             share of the first starts each got, against its configured share

Timings are printed, never asserted; the machine is shared, read the rows of one run
against each other. Usage: python ops/bench/queue_bench.py [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import harness
import httpx

from node_worker.config import WorkerSettings
from node_worker.worker import Worker
from router.config import RouterSettings
from router.service import RouterService
from services.nats_server import NatsServer
from tools.simulator import SimModel, Simulator

MODEL = "m:1b"
TENANTS = [
    {"name": "one", "key": "k1", "weight": 1},
    {"name": "two", "key": "k2", "weight": 2},
    {"name": "four", "key": "k4", "weight": 4},
]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@asynccontextmanager
async def setup(latency_ms: float, **router: Any) -> AsyncIterator[tuple[RouterService, str]]:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(NatsServer())
        sim = await stack.enter_async_context(
            Simulator(models=[SimModel(MODEL)], latency_ms=latency_ms, tokens=4)
        )
        for n in range(2):
            settings = WorkerSettings(
                node_id=f"bench-{n}",
                nats_url=[server.url],
                backends=[{"kind": "ollama", "url": sim.url}],
                limits={"llm_concurrency": 2},
            )
            await stack.enter_async_context(Worker(settings))
        values: dict[str, Any] = {
            "nats_url": [server.url],
            "http": {"host": "127.0.0.1", "port": 0, "api_keys": TENANTS},
            **router,
        }
        service = await stack.enter_async_context(RouterService(RouterSettings(**values)))
        yield service, service.url


def body(text: str = "hi") -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}]}


async def gaps(latency_ms: float, calls: int, concurrency: int) -> list[float]:
    ends: list[float] = []
    gaps_ms: list[float] = []
    async with (
        setup(latency_ms) as (router, url),
        httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": "Bearer k1"},
                          limits=httpx.Limits(max_connections=concurrency + 8)) as http,
    ):  # fmt: skip

        def heard(node: str, kind: str, started: bool) -> None:
            now = time.perf_counter()
            if not started:
                ends.append(now)
            elif ends and router.admission.waiting:
                gaps_ms.append((now - ends[-1]) * 1000.0)

        router.fleet.on_job(heard)
        left = iter(range(calls))

        async def caller() -> None:
            for _ in left:
                await http.post("/v1/chat/completions", json=body())

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return gaps_ms


async def sequential(seconds: float) -> dict[str, harness.Sample]:
    """c=1 through a router process (as the router bench runs it), the line on and off,
    in turn twice each in front of the same worker and simulator (0 ms latency)."""
    samples: dict[str, list[float]] = {"line on": [], "line off": []}
    async with harness.fleet("queue-bench-") as fleet, harness.http_session() as http:
        sim = await fleet.simulator(http, "/api/tags", "--models", MODEL)
        worker = await fleet.worker(sim, "ollama", 4)
        data = json.dumps(body()).encode()
        for _round in range(2):
            for label, extra in (("line on", ""), ("line off", "admission: {max_wait_ms: 0}\n")):
                router, url = await fleet.router(http, worker, extra)

                async def call(url: str = url) -> bool:
                    async with http.post(f"{url}/v1/chat/completions", data=data) as answer:
                        await answer.read()
                        return answer.status == 200

                await harness.measure(call, 1, 1.0)  # warm up
                samples[label] += (await harness.measure(call, 1, seconds)).latencies_ms
                router.terminate()
                await router.wait()
    return {label: harness.Sample(took, 0, seconds) for label, took in samples.items()}


async def fairness(latency_ms: float) -> Counter[str]:
    backlog = {"k1": 30, "k2": 50, "k4": 90}
    finished: list[str] = []
    async with (
        setup(latency_ms) as (_, url),
        httpx.AsyncClient(
            base_url=url, timeout=120, limits=httpx.Limits(max_connections=300)
        ) as http,
    ):

        async def ask(key: str) -> None:
            headers = {"Authorization": f"Bearer {key}"}
            await http.post("/v1/chat/completions", json=body(), headers=headers)
            finished.append(key)

        calls = [ask(key) for key, count in backlog.items() for _ in range(count)]
        await asyncio.gather(*calls)
    # The middle of the run: every tenant has a backlog, the arrivals are in.
    return Counter(finished[14:126])


async def main(calls: int, latency_ms: float) -> None:
    print(f"latency {latency_ms:.0f} ms, 2 nodes x 2 slots")
    gap = await gaps(latency_ms, calls, concurrency=40)
    print(f"gap slot freed -> next start: n={len(gap)} p50 {quantile(gap, 0.5):.2f} ms "
          f"p99 {quantile(gap, 0.99):.2f} ms")  # fmt: skip
    for label, sample in (await sequential(seconds=5.0)).items():
        print(f"c=1 {label:>8}: p50 {sample.pct(0.5):.2f} ms p99 {sample.pct(0.99):.2f} ms "
              f"({len(sample.latencies_ms)} calls)")  # fmt: skip
    served = await fairness(latency_ms)
    total = sum(served.values())
    for key, weight in (("k1", 1), ("k2", 2), ("k4", 4)):
        print(f"weight {weight}: {served[key]} of {total} starts = "
              f"{served[key] / total:.3f} (configured {weight / 7:.3f})")  # fmt: skip


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.latency_ms))


if __name__ == "__main__":
    cli()
