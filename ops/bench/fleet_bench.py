"""The router at fleet scale: 1, 150, 1,000 and 3,000 nodes, with 10 s and 1 s heartbeats.

For each row it starts a nats-server, the runtime simulator with one real node worker in
front of it, N simulated nodes (`tools.simfleet`: valid records built with
`services.capabilities`, 5-20 models each from a pool of ~50, answers that follow the
contract) in a few processes, and the real router, then measures from this process:

  selection   CPU per `select()` on an index of the same fleet (in this process), for a
              model served by 40 nodes and for a "best llm" profile pick; `take()` per
              load-only heartbeat
  c1 / c32    POST /v1/chat/completions through the router for that popular model
              (p50/p99 at c=1, req/s at c=32, and the router's CPU per request at c=32
              with its idle CPU taken off: what the router itself spends per request)
  idle        router CPU % and RSS over a window with only heartbeats flowing; healthy
              nodes seen stale in `/nodes?stale=true` meanwhile; slow-consumer errors in
              the router's log
  new node    from a new node's first record to its first routed answer
  death       from a node's death (connection closed) to the first answer that no longer
              tries it
  views       GET /nodes (first page) and GET /v1/models latency
  spread      over 1,200 requests at c=8 for the popular model: max and min share of the
              nodes serving it (40 per simulator process), relative to a fair share

The machine is shared and noisy: read rows against N = 1 from the same run. With
`--baseline DIR` (another checkout of the project, e.g. a `git worktree` of main) every
row runs the router from this checkout and from DIR in turn on the same simulated fleet,
A B B A for `--rounds 2`, and the summary gives each one's means. Timings are printed,
never asserted. Figures from before the fleet index (same machine) are printed beside.
Usage: python ops/bench/fleet_bench.py [--sizes 1,150,1000,3000] [--heartbeats 10,1]
       [--seconds 3] [--baseline DIR [--rounds 2]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import harness
import nats
from harness import Fleet, measure

from router.fleet.index import FleetIndex
from router.selection.profiles import SelectionConfig
from router.selection.select import select
from services.capabilities import ServedModel
from tools.simfleet import SimNode, SimulatedFleet, random_nodes

POPULAR = ServedModel(name="popular:8b", type="llm", runtime="ollama", size_gb=8.0, running=True)
POPULAR_NODES = 40
NODES_PER_PROCESS = 1000
BODY = json.dumps(
    {"model": POPULAR.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
).encode()
BEFORE = {  # pre-index figures: selection ms, c1 p50 ms, c32 req/s, idle CPU % (10 s), /nodes ms
    1: ("0.12-0.18", "2.3-5", "350-490", "0.2", "1-5"),
    150: ("15-19", "36", "25", "1.75", "48"),
    1000: ("85-175", "520", "2.7", "31.6", "665"),
    3000: ("—", "—", "—", "(2,000: 80)", "—"),
}


@dataclass
class Row:
    nodes: int
    heartbeat_s: float
    code: str = "this"  # which checkout's router: "this" or "base"
    select_us: float = 0.0
    best_us: float = 0.0
    take_us: float = 0.0
    c1_p50: float = 0.0
    c1_p99: float = 0.0
    c32_rate: float = 0.0
    request_us: float = 0.0  # router CPU per request at c=32, idle CPU taken off
    errors: int = 0
    idle_cpu: float = 0.0
    rss_mb: float = 0.0
    stale_seen: int = 0
    slow_consumer: int = 0
    new_node_ms: float = 0.0
    death_ms: float = 0.0
    nodes_ms: float = 0.0
    models_ms: float = 0.0
    spread_max: float = 0.0
    spread_min: float = 0.0


def fleet_nodes(prefix: str, count: int, seed: int) -> list[SimNode]:
    nodes = random_nodes(prefix, count, random.Random(seed))
    for node in nodes[:POPULAR_NODES]:
        node.models = (*node.models, POPULAR)
    return nodes


def selection_cost(count: int) -> tuple[float, float, float]:
    """µs per select() (popular model, best llm) and per load-only take(), in this process."""
    nodes = fleet_nodes("sel", count, 1)
    index = FleetIndex()
    for node in nodes:
        index.take(node.record(30.0), 0.0)
    config = SelectionConfig.model_validate(
        {"llm_profiles": {"chat": {"provider": "ollama", "model": "not-served:1b"}}}
    )
    rng = random.Random(2)
    timings = []
    for request_model in (POPULAR.name, "chat"):
        calls = 3000
        started = time.process_time()
        for _ in range(calls):
            select(config, index, request_model=request_model, now=1.0, rng=rng)
        timings.append((time.process_time() - started) / calls * 1e6)
    records = [node.record(30.0) for node in nodes]
    started = time.process_time()
    for record in records:
        index.take(record, 2.0)
    take_us = (time.process_time() - started) / len(records) * 1e6
    return timings[0], timings[1], take_us


async def run_sims(nats_url: str, prefix: str, count: int, seed: int, heartbeat_s: float) -> None:
    """Child mode: `count` simulated nodes until SIGTERM."""
    nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)
    async with SimulatedFleet(nc, fleet_nodes(prefix, count, seed), heartbeat_s=heartbeat_s):
        print("ready", flush=True)
        await asyncio.Event().wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with http.get(url) as response:
        return response.status, await response.json()


async def infer(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with http.post(f"{url}/infer", json={"prompt": "hi", "model": model}) as response:
        return response.status, await response.json()


async def one_row(
    nodes: int, heartbeat_s: float, seconds: float, codes: list[tuple[str, Path | None]]
) -> list[Row]:
    """One fleet; a router from each of `codes` (label, checkout) in turn measured on it."""
    in_process = Row(nodes, heartbeat_s)
    in_process.select_us, in_process.best_us, in_process.take_us = selection_cost(nodes)
    rows = []
    async with harness.fleet("fleet-bench-") as fleet, harness.http_session() as http:
        sim_url = await fleet.simulator(http, "/api/tags", "--tokens", "4")
        worker = await fleet.worker(sim_url, "ollama", llm_concurrency=64)
        await start_sims(fleet, nodes, heartbeat_s)
        for turn, (label, code) in enumerate(codes):
            row = replace(in_process, code=label)
            name = f"router{turn}"
            router, url = await fleet.router(http, worker, name=name, code=code)
            await wait_for(http, url, nodes + 1)
            await measure_router(row, http, url, router.pid, fleet.nats_url, seconds)
            router_log = fleet.children.tail(name, 100000)
            row.slow_consumer = router_log.lower().count("slow consumer")
            if row.death_ms > 5000:
                print(f"router log, {nodes} nodes:\n{router_log[-3000:]}", file=sys.stderr)
            await fleet.children.stop(router)
            rows.append(row)
    return rows


async def measure_router(
    row: Row, http: aiohttp.ClientSession, url: str, pid: int, nats_url: str, seconds: float
) -> None:
    call = caller(http, f"{url}/v1/chat/completions")
    await measure(call, 4, 1.0)  # warm-up
    c1 = await measure(call, 1, seconds)
    busy_before = cpu_seconds(pid)
    c32 = await measure(call, 32, seconds)
    busy_s = cpu_seconds(pid) - busy_before
    row.c1_p50, row.c1_p99, row.c32_rate = c1.pct(0.5), c1.pct(0.99), c32.rate
    row.errors = c1.errors + c32.errors
    row.idle_cpu, row.stale_seen = await idle_window(http, url, pid, 2 * seconds)
    idle_s = row.idle_cpu / 100 * c32.seconds
    row.request_us = max(0.0, busy_s - idle_s) / max(1, len(c32.latencies_ms)) * 1e6
    row.rss_mb = rss_mb(pid)
    row.nodes_ms = await latency(http, f"{url}/nodes")
    row.models_ms = await latency(http, f"{url}/v1/models")
    row.spread_max, row.spread_min = await spread(http, url)
    row.new_node_ms, row.death_ms = await join_and_death(http, url, nats_url)


async def start_sims(fleet: Fleet, nodes: int, heartbeat_s: float) -> None:
    started = 0
    part = 0
    while started < nodes:
        count = min(NODES_PER_PROCESS, nodes - started)
        process = await fleet.children.spawn(
            f"sims{part}",
            sys.executable,
            __file__,
            "--sim",
            fleet.nats_url,
            f"sim{part}",
            str(count),
            str(part),
            str(heartbeat_s),
        )
        log = fleet.children.logs / f"sims{part}.log"

        async def ready(log: object = log) -> bool:
            return "ready" in log.read_text()  # type: ignore[attr-defined]

        await fleet.children.wait_ready(f"sims{part}", process, ready, 120)
        started += count
        part += 1


async def wait_for(http: aiohttp.ClientSession, url: str, total: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, page = await get_json(http, f"{url}/nodes?limit=1")
        if page["total"] >= total:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the router knows {page['total']} nodes, not {total}")


def caller(http: aiohttp.ClientSession, url: str):  # type: ignore[no-untyped-def]
    async def call() -> bool:
        async with http.post(url, data=BODY) as response:
            await response.read()
            return response.status == 200

    return call


async def idle_window(
    http: aiohttp.ClientSession, url: str, pid: int, seconds: float
) -> tuple[float, int]:
    """Router CPU % with only heartbeats flowing, and healthy nodes seen stale meanwhile."""
    stale_seen = 0
    before, started = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(0.5)
        _, page = await get_json(http, f"{url}/nodes?stale=true&limit=1000")
        stale_seen = max(stale_seen, len(page["nodes"]))
    elapsed = time.monotonic() - started
    return (cpu_seconds(pid) - before) / elapsed * 100, stale_seen


async def latency(http: aiohttp.ClientSession, url: str, calls: int = 20) -> float:
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        async with http.get(url) as response:
            await response.read()
        timings.append((time.perf_counter() - started) * 1000)
    return harness.percentile(timings, 0.5)


async def spread(http: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    served: Counter[str] = Counter()
    queue = list(range(1200))

    async def loop() -> None:
        while queue:
            queue.pop()
            status, answer = await infer(http, url, POPULAR.name)
            if status == 200:
                served[answer["route"]["node"]] += 1

    await asyncio.gather(*(loop() for _ in range(8)))
    _, page = await get_json(http, f"{url}/nodes?model={POPULAR.name}&limit=1000")
    serving = max(1, len(page["nodes"]))
    fair = sum(served.values()) / serving
    shares = [served.get(node, 0) for node in served] + [0] * (serving - len(served))
    return max(shares) / fair, min(shares) / fair


async def join_and_death(
    http: aiohttp.ClientSession, url: str, nats_url: str
) -> tuple[float, float]:
    """ms from a new node's first record to its first answer; from its death to no tries."""
    nc = await nats.connect(nats_url)
    newcomer = SimNode(
        f"newcomer-{os.getpid()}",
        (ServedModel(name="newcomer:1b", type="llm", runtime="ollama", size_gb=1.0),),
    )
    sims = SimulatedFleet(nc, [], heartbeat_s=10)
    await sims.start()
    started = time.perf_counter()
    await sims.add(newcomer)
    while True:  # polling is the measurement: how soon a caller sees it routable
        if (await infer(http, url, "newcomer:1b"))[0] == 200:
            break
        await asyncio.sleep(0.005)
    joined_ms = (time.perf_counter() - started) * 1000
    await sims.stop()
    await nc.close()  # the node dies: its subscriptions vanish with the connection
    started = time.perf_counter()
    while True:
        _, answer = await infer(http, url, "newcomer:1b")
        tried = {a.get("node") for a in answer.get("route", {}).get("attempts", [])}
        if newcomer.node_id not in tried:
            break
        await asyncio.sleep(0.005)
    return joined_ms, (time.perf_counter() - started) * 1000


def print_rows(rows: list[Row]) -> None:
    print(f"\nfleet benchmark, {os.cpu_count()} cores (shared); before = pre-index figures\n")
    print(
        f"{'nodes':>5} {'hb':>3} {'code':>4} | {'select µs':>9} {'best µs':>8} {'take µs':>7} | "
        f"{'c1 p50':>7} {'c1 p99':>7} {'c32 r/s':>7} {'µs/req':>6} {'err':>3} | "
        f"{'idle %':>6} {'RSS MB':>6} {'stale':>5} {'slowc':>5} | {'join ms':>7} "
        f"{'death ms':>8} | {'/nodes':>6} {'/models':>7} | {'spread max/min':>14}"
    )
    for r in rows:
        print(
            f"{r.nodes:5d} {r.heartbeat_s:3g} {r.code:>4} | {r.select_us:9.1f} {r.best_us:8.1f} "
            f"{r.take_us:7.1f} | {r.c1_p50:7.2f} {r.c1_p99:7.2f} {r.c32_rate:7.0f} "
            f"{r.request_us:6.0f} {r.errors:3d} | {r.idle_cpu:6.2f} {r.rss_mb:6.0f} "
            f"{r.stale_seen:5d} {r.slow_consumer:5d} | {r.new_node_ms:7.1f} {r.death_ms:8.1f} | "
            f"{r.nodes_ms:6.2f} {r.models_ms:7.2f} | {r.spread_max:6.2f}/{r.spread_min:<6.2f}"
        )
    print_means(rows)
    print("\npre-index: selection ms | c1 p50 ms | c32 req/s | idle % (10 s) | /nodes ms")
    for nodes, figures in BEFORE.items():
        print(f"{nodes:5d}: " + " | ".join(figures))


def print_means(rows: list[Row]) -> None:
    """Per heartbeat, size and checkout: mean c=32 rate (and its ratio to the same
    checkout's smallest fleet), router µs per request, idle CPU and join time."""
    groups: dict[tuple[float, int, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.heartbeat_s, r.nodes, r.code), []).append(r)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    print(
        f"\n{'hb':>3} {'nodes':>5} {'code':>4} | {'c32 r/s':>7} {'ratio':>5} "
        f"{'µs/req':>6} {'idle %':>6} {'join ms':>7} | runs"
    )
    for (hb, nodes, code), group in sorted(groups.items()):
        smallest = min(n for (h, n, c) in groups if h == hb and c == code)
        base_rate = mean([r.c32_rate for r in groups[hb, smallest, code]])
        rate = mean([r.c32_rate for r in group])
        print(
            f"{hb:3g} {nodes:5d} {code:>4} | {rate:7.0f} {rate / base_rate:5.2f} "
            f"{mean([r.request_us for r in group]):6.0f} "
            f"{mean([r.idle_cpu for r in group]):6.2f} "
            f"{mean([r.new_node_ms for r in group]):7.1f} | {len(group)}"
        )


async def main(
    sizes: list[int], heartbeats: list[float], seconds: float, baseline: Path | None, rounds: int
) -> None:
    codes: list[tuple[str, Path | None]] = [("this", None)]
    if baseline is not None:
        pair = [("this", None), ("base", baseline)]
        codes = [entry for turn in range(rounds) for entry in pair[:: 1 if turn % 2 == 0 else -1]]
    rows = []
    for heartbeat_s in heartbeats:
        for nodes in sizes:
            print(f"row: {nodes} nodes, {heartbeat_s:g} s heartbeats", file=sys.stderr)
            rows.extend(await one_row(nodes, heartbeat_s, seconds, codes))
    print_rows(rows)


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--sim":
        nats_url, prefix, count, seed, heartbeat = sys.argv[2:7]
        harness.run_cli(
            run_sims(nats_url, prefix, int(count), int(seed), float(heartbeat)), "fleet sims"
        )
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,150,1000,3000")
    parser.add_argument("--heartbeats", default="10,1")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=2, help="A B (B A ...) turns")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    heartbeats = [float(h) for h in args.heartbeats.split(",")]
    harness.run_cli(
        main(sizes, heartbeats, args.seconds, args.baseline, args.rounds), "fleet benchmark"
    )


if __name__ == "__main__":
    cli()
