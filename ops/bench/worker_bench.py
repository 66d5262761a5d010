"""What the worker costs on top of NATS and HTTP, measured in one run.

Starts a nats-server, the runtime simulator (0 ms latency), a raw nats-py echo responder
and a node worker, each in its own process, then measures from this process:

  floor  nats request → echo responder              (the bus alone)
  floor  HTTP POST /api/chat → simulator            (the runtime alone)
  path   nats request → worker → simulator → reply  (what a job costs)

at concurrency 1 (p50/p99 latency) and at concurrency 64 (jobs/s, errors). The machine is
shared and noisy: read the ratios and the difference against the floor from the same run,
not absolute numbers. Usage: python ops/bench/worker_bench.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import harness
import nats
from harness import Fleet, Sample, measure

from services.bus import wait_for_worker
from services.runtimes import new_http_client

ECHO_RESPONDER = """
import asyncio, sys, nats, uvloop
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""

JOB = json.dumps({"prompt": "hello there, how are you", "params": {"max_tokens": 16}}).encode()


def report(name: str, c1: Sample, c64: Sample) -> None:
    print(
        f"{name:<34} c1 p50 {c1.pct(0.5):7.3f} ms  p99 {c1.pct(0.99):7.3f} ms  "
        f"| c64 {c64.rate:8.0f} /s  p50 {c64.pct(0.5):6.2f} ms  errors {c64.errors + c1.errors}"
    )


async def main(seconds: float) -> None:
    async with harness.fleet("worker-bench-") as fleet:
        results = await run_bench(fleet, seconds)

    print(f"\nworker benchmark, {seconds:g} s per measurement, {os.cpu_count()} cores\n")
    for name, (c1, c64) in results.items():
        report(name, c1, c64)
    echo_c1 = results["floor: nats echo"][0]
    http_c1 = results["floor: http → simulator"][0]
    path_c1, path_c64 = results["worker: nats → worker → simulator"]
    floor = echo_c1.pct(0.5) + http_c1.pct(0.5)
    print(
        f"\nadded by the worker at c1, p50: {path_c1.pct(0.5) - floor:+.3f} ms "
        f"over the floor (echo + http = {floor:.3f} ms)  target ≤ 0.5 ms"
    )
    print(
        f"throughput at c64: {path_c64.rate:.0f} jobs/s, errors {path_c64.errors}  "
        "target ≥ 1500 jobs/s, 0 errors"
    )


async def run_bench(fleet: Fleet, seconds: float) -> dict[str, tuple[Sample, Sample]]:
    async with harness.http_session() as probe:  # only to see the simulator answer
        sim_url = await fleet.simulator(probe, "/api/tags", "--tokens", "16")
    echo_responder = await fleet.children.spawn(
        "echo", sys.executable, "-c", ECHO_RESPONDER, fleet.nats_url
    )

    async def echo_ready() -> bool:
        return "ready" in fleet.children.tail("echo")

    await fleet.children.wait_ready("echo", echo_responder, echo_ready, 30)
    await fleet.worker(sim_url, "ollama", llm_concurrency=128)
    nc = await nats.connect(fleet.nats_url, pending_size=64 * 1024 * 1024)
    try:
        await wait_for_worker(nc, "node.bench.llm.request")

        async def echo() -> bool:
            await nc.request("bench.echo", JOB, timeout=5)
            return True

        async def job() -> bool:
            msg = await nc.request("node.bench.llm.request", JOB, timeout=5)
            return b'"status":"ok"' in msg.data

        async with new_http_client() as http:
            body = {
                "model": "llama3.2:3b",
                "stream": False,
                "messages": [{"role": "user", "content": "hello there, how are you"}],
            }
            url = f"{sim_url}/api/chat"

            async def direct() -> bool:
                response = await http.post(url, json=body)
                return response.status_code == 200

            for call in (echo, direct, job):  # warm-up
                await measure(call, 8, 0.5)
            results = {}
            for name, call in (
                ("floor: nats echo", echo),
                ("floor: http → simulator", direct),
                ("worker: nats → worker → simulator", job),
            ):
                results[name] = (
                    await measure(call, 1, seconds),
                    await measure(call, 64, seconds),
                )
    finally:
        await nc.close()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    harness.run_cli(main(parser.parse_args().seconds), "worker bench")
