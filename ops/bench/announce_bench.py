"""What one load-only announcement (a slot taken or freed) costs the router, in-process.

A worker re-announces its record at once when a slot type fills up or frees; the router's
line wakes on those records, so their cost bounds how large a fleet one router follows.
This measures the router's own code for one record, as the NATS callback runs it
(`FleetView.take_message`: size check, the node's steady bytes compared, the rest parsed
and its moving fields validated, the index updated, the router's and the line's listeners
called), on real encoded records of simulated nodes (5-20 models each; one slot taken or
freed, the runtime's job counters and probe latency moved, as a real worker's record after
a job), at 1, 1,000 and 3,000 nodes:

  idle        nobody waits in the line (the line's listener is one check)
  waiting     1,000 calls wait in 50 lanes while the fleet is full: each record makes
              the line look for a free slot in every lane with waiters

  over NATS  (`--over-nats N`) the whole cost: a router process and N simulated nodes
              announcing every second through a nats-server; the router's CPU over a
              window divided by the records it got (nats-py's dispatch, the event loop
              and the expiry sweep included)

Timings are printed, never asserted.
Usage: python ops/bench/announce_bench.py [--sizes 1,1000,3000] [--over-nats 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import harness
from fleet_bench import cpu_seconds, start_sims, wait_for

from router.admission.lanes import Waiter
from router.admission.tenants import Tenant
from router.config import RouterSettings
from router.service import RouterService
from services.capabilities import Load, encode_capabilities
from services.subjects import Subjects
from tools.simfleet import MODEL_POOL, SimNode, random_nodes

ROUNDS = 5


def encoded_rounds(nodes: list[SimNode], rounds: int) -> list[list[tuple[str, bytes]]]:
    """Per round, each node's next record with one slot taken or freed."""
    subjects = Subjects("")
    out = []
    for round_number in range(rounds):
        batch = []
        for node in nodes:
            record = node.record(30.0)
            inflight = node.capacity if round_number % 2 == 0 else node.capacity - 1
            load = {"llm": Load(inflight=inflight, capacity=node.capacity)}
            record = record.model_copy(update={"load": {**record.load, **load}})
            batch.append((subjects.capabilities(node.node_id), encode_capabilities(record)))
        out.append(batch)
    return out


async def one_size(count: int, waiting: bool) -> float:
    nodes = random_nodes("n", count, random.Random(7))
    service = RouterService(RouterSettings())  # wired as it runs, never started: no I/O
    view, line = service.fleet, service.admission
    subjects = Subjects("")
    for node in nodes:
        view.take_message(
            subjects.capabilities(node.node_id), encode_capabilities(node.record(30.0))
        )
    if waiting:
        loop = asyncio.get_running_loop()
        lanes = [(name, kind) for name, kind, _size in MODEL_POOL]
        for n in range(1000):
            tenant = Tenant(f"t{n % 7}", "interactive")
            waiter = Waiter(tenant, "interactive", lanes[n % len(lanes)], 0.0, loop.create_future())
            line._lanes.join(waiter, front=False)  # a bench may reach in: no HTTP in front
    rounds = encoded_rounds(nodes, ROUNDS)
    started = time.process_time()
    for batch in rounds:
        for subject, data in batch:
            view.take_message(subject, data)
    spent = time.process_time() - started
    await service.stop()
    return spent / (ROUNDS * count) * 1e6


async def main(sizes: list[int]) -> None:
    print(f"{'nodes':>6} {'idle µs/record':>15} {'1,000 waiting µs/record':>24}")
    for count in sizes:
        idle = await one_size(count, waiting=False)
        busy = await one_size(count, waiting=True)
        print(f"{count:>6} {idle:>15.1f} {busy:>24.1f}")


async def over_nats(count: int, seconds: float = 12.0) -> None:
    """Router CPU per record with `count` nodes announcing every second (and nothing else)."""
    async with harness.fleet("announce-bench-") as fleet, harness.http_session() as http:
        await start_sims(fleet, count, 1.0)
        router, url = await fleet.router_alone(http)
        await wait_for(http, url, count)
        await asyncio.sleep(3)  # past start-up
        before, started = cpu_seconds(router.pid), time.monotonic()
        await asyncio.sleep(seconds)
        busy = (cpu_seconds(router.pid) - before) / (time.monotonic() - started)
    print(
        f"over NATS, {count} nodes at 1 s: router {busy * 100:.1f} % of a core, "
        f"{busy / count * 1e6:.1f} µs per record"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,1000,3000")
    parser.add_argument("--over-nats", type=int, default=0, help="nodes (0: in-process only)")
    args = parser.parse_args()
    if args.over_nats:
        harness.run_cli(over_nats(args.over_nats), "announce benchmark")
        return
    asyncio.run(main([int(size) for size in args.sizes.split(",")]))


if __name__ == "__main__":
    cli()
