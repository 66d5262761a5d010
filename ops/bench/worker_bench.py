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
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats

from services.bus import wait_for_worker
from services.localnet import free_port
from services.loop import run
from services.nats_server import NatsServer
from services.runtimes import new_http_client

ROOT = Path(__file__).resolve().parents[2]

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


@dataclass
class Sample:
    latencies_ms: list[float]
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float) -> Sample:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            ok = await call()
            latencies.append((time.perf_counter() - started) * 1000)
            errors += not ok

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return Sample(latencies, errors, time.perf_counter() - started)


async def spawn(*argv: str, ready: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while ready not in (await process.stdout.readline()).decode():
            if process.returncode is not None:
                raise RuntimeError(f"{argv} exited early")
    return process


def report(name: str, c1: Sample, c64: Sample) -> None:
    print(
        f"{name:<34} c1 p50 {c1.pct(0.5):7.3f} ms  p99 {c1.pct(0.99):7.3f} ms  "
        f"| c64 {c64.rate:8.0f} /s  p50 {c64.pct(0.5):6.2f} ms  errors {c64.errors + c1.errors}"
    )


async def main(seconds: float) -> None:
    processes: list[asyncio.subprocess.Process] = []
    async with NatsServer() as server:
        try:
            sim_port = free_port()
            processes.append(
                await spawn(
                    sys.executable,
                    "-m",
                    "services.simulator",
                    "--port",
                    str(sim_port),
                    "--latency-ms",
                    "0",
                    "--tokens",
                    "16",
                    ready="listening on",
                )
            )
            processes.append(
                await spawn(sys.executable, "-c", ECHO_RESPONDER, server.url, ready="ready")
            )
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "worker.toml"
                config.write_text(
                    f'node_id = "bench"\nnats_url = "{server.url}"\n'
                    "[limits]\nllm_concurrency = 128\n"
                    f'[[backends]]\nkind = "ollama"\nurl = "http://127.0.0.1:{sim_port}"\n'
                )
                worker = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "node_worker",
                    "--config",
                    str(config),
                    "--log-level",
                    "WARNING",
                    cwd=ROOT,
                )
                processes.append(worker)
                nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024)
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
                    url = f"http://127.0.0.1:{sim_port}/api/chat"

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
                await nc.close()
        finally:
            for process in processes:
                if process.returncode is None:
                    process.terminate()
                    await process.wait()

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    run(main(parser.parse_args().seconds))
