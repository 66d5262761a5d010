"""What a tenant's limits shared across routers (`limits.shared`) cost a call.

A nats-server with JetStream, the runtime simulator (0 ms), one node worker with 16 llm
slots, and a router process in front, configured in turn (ABBA, twice) with one tenant
whose `rpm` and `max_concurrent` are counted

  local      in the router (`limits.shared: false`)
  shared     across routers in JetStream KV (`limits.shared: true`): rpm's counter, and
             the tenant's running-calls lease read and written before each call and
             again, in the background, after it

and calls at c=1 and c=16. Printed per row: p50/p99 latency and the router's CPU per
call (utime + stime from /proc/<pid>/stat, the figure to trust on a shared machine).
Timings are printed, never asserted. Usage: python ops/bench/shared_limits_bench.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import harness

MODEL = "m:1b"
TENANT = "  api_keys: [{name: t, key: k, rpm: 100000000, max_concurrent: 1000}]\n"
SETUPS = {"local": TENANT, "shared": TENANT + "limits: {shared: true}\n"}
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


async def main(seconds: float) -> None:
    rows: dict[tuple[str, int], list[tuple[harness.Sample, float]]] = {}
    async with (
        harness.fleet("shared-limits-bench-", jetstream=True) as fleet,
        harness.http_session() as http,
    ):
        sim = await fleet.simulator(http, "/api/tags", "--models", MODEL)
        worker = await fleet.worker(sim, "ollama", 16)
        data = json.dumps({"model": MODEL, "prompt": "hi"}).encode()
        headers = {"Authorization": "Bearer k"}
        for label in ("local", "shared", "shared", "local"):
            router, url = await fleet.router(http, worker, SETUPS[label])

            async def call(url: str = url) -> bool:
                async with http.post(f"{url}/infer", data=data, headers=headers) as answer:
                    await answer.read()
                    return answer.status == 200

            await harness.measure(call, 4, 1.0)  # warm up
            for concurrency in (1, 16):
                before = cpu_s(router.pid)
                sample = await harness.measure(call, concurrency, seconds)
                calls = max(1, len(sample.latencies_ms))
                router_ms = (cpu_s(router.pid) - before) / calls * 1000
                rows.setdefault((label, concurrency), []).append((sample, router_ms))
            router.terminate()
            await router.wait()
    print(f"{'limits':>7} {'c':>3} {'calls':>6} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'router CPU ms/call':>19}")  # fmt: skip
    for (label, concurrency), runs in sorted(rows.items()):
        for sample, router_ms in runs:
            print(f"{label:>7} {concurrency:>3} {len(sample.latencies_ms):>6} "
                  f"{sample.errors:>6} {sample.pct(0.5):>7.2f} {sample.pct(0.99):>7.2f} "
                  f"{router_ms:>19.3f}")  # fmt: skip


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    harness.run_cli(main(args.seconds), "shared_limits_bench")


if __name__ == "__main__":
    cli()
