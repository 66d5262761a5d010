"""How fast the router moves a job off a node that dies or freezes while holding it.

Starts a nats-server, a "victim" worker process in front of a simulator that never
answers in time (60 s latency), a healthy in-process worker in front of another one,
and the router; sends one job (whole or streamed) that lands on the victim, then
SIGKILLs or SIGSTOPs the victim and prints how long after the signal the caller had its
answer. Workers heartbeat every 10 s, so only the router's liveness probe can notice
within these times. Timings are printed, never asserted.

Usage: python ops/bench/liveness_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import nats

from node_worker.config import WorkerSettings
from node_worker.worker import Worker
from router.config import RouterSettings
from router.service import RouterService
from services.bus import wait_for_worker
from services.loop import run
from services.nats_server import NatsServer
from tools.simulator import SimModel, Simulator

ROOT = Path(__file__).resolve().parents[2]
MODEL = "m:1b"


async def until(condition: Callable[[], bool]) -> None:
    """Poll what another process or task makes true (a benchmark, not a hot path)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the fleet did not get ready")


async def victim_process(folder: Path, url: str, sim_url: str) -> asyncio.subprocess.Process:
    config = folder / "victim.toml"
    config.write_text(
        f'node_id = "victim"\nnats_url = "{url}"\nheartbeat_s = 10\n'
        f'[[backends]]\nkind = "ollama"\nurl = "{sim_url}"\n'
    )
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node_worker", "--config", str(config), "--log-level", "ERROR",
        cwd=ROOT, env=os.environ.copy(),
    )  # fmt: skip


async def one_round(how: signal.Signals, stream: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        async with (
            NatsServer() as server,
            Simulator(models=[SimModel(MODEL)], latency_ms=60_000) as stuck,
            Simulator(models=[SimModel(MODEL)]) as fine,
        ):
            process = await victim_process(Path(folder), server.url, stuck.url)
            try:
                probe = await nats.connect(server.url)
                await wait_for_worker(probe, "node.victim.llm.request")
                await probe.close()
                settings = RouterSettings(
                    nats_url=[server.url], http={"host": "127.0.0.1", "port": 0}
                )
                async with RouterService(settings) as router, httpx.AsyncClient() as http:
                    job = {"prompt": "x", "model": MODEL, "timeout_ms": 20_000, "stream": stream}
                    pending = asyncio.ensure_future(
                        http.post(f"{router.url}/infer", json=job, timeout=30)
                    )
                    await until(lambda: stuck.open_connections > 0)
                    worker_settings = WorkerSettings(
                        node_id="healthy",
                        nats_url=[server.url],
                        backends=[{"kind": "ollama", "url": fine.url}],
                    )
                    async with Worker(worker_settings):
                        await until(lambda: "healthy" in router.fleet.nodes)
                        signalled = time.monotonic()
                        process.send_signal(how)
                        answer = await pending
                        elapsed = time.monotonic() - signalled
                    text = answer.text.strip().splitlines()[-1]
                    assert json.loads(text).get("status") == "ok", text
                    return elapsed
            finally:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                await process.wait()


async def main(rounds: int) -> None:
    print(f"liveness: seconds from the signal to the caller's answer ({rounds} rounds)")
    for how in (signal.SIGKILL, signal.SIGSTOP):
        for stream in (False, True):
            times = [await one_round(how, stream) for _ in range(rounds)]
            shown = ", ".join(f"{t:.3f}" for t in times)
            kind = "stream (before its first token)" if stream else "whole"
            print(f"  {how.name:8} {kind:32} {shown}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    run(main(parser.parse_args().rounds))
