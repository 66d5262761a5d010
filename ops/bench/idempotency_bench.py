"""What the shared idempotency store (JetStream KV) costs a job, measured in one run.

Starts a nats-server with JetStream, the runtime simulator (0 ms latency) and two node
workers in front of it, each in its own process: one with the default in-memory store,
one with `idempotency.store = "jetstream"`. Then, from this process:

  memory     nats request → worker → simulator, a fresh key per job
  jetstream  the same with the KV claim (read, create, final update) around the call
  replay     jetstream, the same key again: answered from the store, no runtime call

at concurrency 1 (p50/p99 latency) and 32 (jobs/s). The machine is shared and noisy:
read the difference between the rows of one run, not absolute numbers.
Usage: python ops/bench/idempotency_bench.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Awaitable, Callable

import harness
import nats
from harness import Sample, measure

from services.bus import wait_for_worker

SHARED_STORE = '[idempotency]\nstore = "jetstream"\n'


def payload(key: str) -> bytes:
    job = {"prompt": "hello there", "params": {"max_tokens": 16}, "idempotency_key": key}
    return json.dumps(job).encode()


def report(name: str, c1: Sample, c32: Sample) -> None:
    print(
        f"{name:<11} c1 p50 {c1.pct(0.5):7.3f} ms  p99 {c1.pct(0.99):7.3f} ms  "
        f"| c32 {c32.rate:7.0f} /s  p50 {c32.pct(0.5):6.2f} ms  errors {c1.errors + c32.errors}"
    )


async def main(seconds: float) -> None:
    async with harness.fleet("idempotency-bench-", jetstream=True) as fleet:
        async with harness.http_session() as probe:
            sim_url = await fleet.simulator(probe, "/api/tags", "--tokens", "16")
        await fleet.worker(sim_url, "ollama", 64, node_id="memory")
        await fleet.worker(sim_url, "ollama", 64, node_id="jetstream", extra_toml=SHARED_STORE)
        nc = await nats.connect(fleet.nats_url, pending_size=64 * 1024 * 1024)
        counter = itertools.count()
        try:
            for node in ("memory", "jetstream"):
                await wait_for_worker(nc, f"node.{node}.llm.request")

            def fresh_keys(node: str) -> Callable[[], Awaitable[bool]]:
                async def job() -> bool:
                    data = payload(f"bench-{next(counter)}")
                    msg = await nc.request(f"node.{node}.llm.request", data, timeout=5)
                    return b'"status":"ok"' in msg.data

                return job

            async def replay() -> bool:
                data = payload("bench-replayed")
                msg = await nc.request("node.jetstream.llm.request", data, timeout=5)
                return b'"status":"ok"' in msg.data

            calls = {
                "memory": fresh_keys("memory"),
                "jetstream": fresh_keys("jetstream"),
                "replay": replay,
            }
            for call in calls.values():  # warm-up
                await measure(call, 8, 0.5)
            results = {
                name: (await measure(call, 1, seconds), await measure(call, 32, seconds))
                for name, call in calls.items()
            }
        finally:
            await nc.close()
    print(f"\nidempotency store benchmark, {seconds:g} s per measurement, {os.cpu_count()} cores\n")
    for name, (c1, c32) in results.items():
        report(name, c1, c32)
    added = results["jetstream"][0].pct(0.5) - results["memory"][0].pct(0.5)
    print(f"\nadded by the JetStream claim at c1, p50: {added:+.3f} ms per job")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    harness.run_cli(main(parser.parse_args().seconds), "idempotency bench")
