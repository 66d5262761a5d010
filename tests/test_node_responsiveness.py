"""A node answers its liveness probes whatever it is doing: the biggest embedding jobs the
bounds allow, and one far beyond them, while a probe loop measures `node.<id>.caps`.

Every process is its own, as in a fleet: the runtime simulator (its vectors cost it
seconds of CPU to make), the worker, and this test, which only sends jobs and probes. A
router takes a node for hung when `liveness_misses` probes in a row go unanswered for
`liveness_timeout_ms` each (router/serving/liveness.py); no single probe may come near
that timeout here.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from router.config import OffloadSettings
from services.bounds import MAX_EMBED_INPUTS
from services.bus import wait_for_worker
from services.nats_server import NatsServer
from services.wire import JobResponse
from tests.jobs import ask
from tests.sim_process import ANNOUNCE, simulator_process

ROOT = Path(__file__).resolve().parents[1]
EMBEDDER = "nomic-embed-text"
PROBE_EVERY_S = 0.05


@contextlib.asynccontextmanager
async def worker_process(config: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "node_worker", "--config", str(config), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
        try:
            yield process
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


class Prober:
    """Asks `node.<id>.caps` every PROBE_EVERY_S and keeps each round trip."""

    def __init__(self, nc: NatsClient, node_id: str) -> None:
        self._nc = nc
        self._subject = f"node.{node_id}.caps"
        self.round_trips_s: list[float] = []
        self.failures: list[str] = []

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                await self._nc.request(self._subject, b"", timeout=10)
            except (nats.errors.Error, TimeoutError) as error:
                self.failures.append(type(error).__name__)
            else:
                self.round_trips_s.append(time.perf_counter() - started)
            await asyncio.sleep(PROBE_EVERY_S)


def many(count: int) -> list[str]:
    return [f"input {index}" for index in range(count)]


async def test_caps_answers_stay_within_the_probe_timeout_during_the_biggest_embeddings(
    tmp_path: Path, node_id: str
) -> None:
    bus_config = tmp_path / "bus.conf"
    bus_config.write_text("max_payload: 8MB\n")  # as ops/nats/single.conf
    worker_config = tmp_path / "worker.toml"
    async with (
        NatsServer(config_file=bus_config) as bus,
        simulator_process(
            "--models", f"{EMBEDDER}:embed", "--embedding-dimensions", "512"
        ) as (_, announced),
    ):  # fmt: skip
        worker_config.write_text(
            f'node_id = "{node_id}"\nnats_url = ["{bus.url}"]\n'
            f'[[backends]]\nkind = "ollama"\nurl = "{announced.removeprefix(ANNOUNCE)}"\n'
        )
        async with (
            worker_process(worker_config, tmp_path / "worker.log"),
            await nats.connect(bus.url) as nc,
        ):
            subject = f"node.{node_id}.embed.request"
            await wait_for_worker(nc, f"node.{node_id}.caps")
            prober = Prober(nc, node_id)
            probing = asyncio.create_task(prober.run())
            started = time.perf_counter()
            refused = await ask(nc, subject, {"input": many(200_000)}, timeout_s=60)
            # The most the bounds allow: 2,048 inputs; at the model's own width (512
            # numbers each, ~10 MB as JSON, over the bus) and at 128 (~2.6 MB, fits).
            over, fits = await asyncio.gather(
                ask(nc, subject, {"input": many(MAX_EMBED_INPUTS)}, timeout_s=120),
                ask(
                    nc,
                    subject,
                    {"input": many(MAX_EMBED_INPUTS), "dimensions": 128},
                    timeout_s=120,
                ),
            )
            busy_s = time.perf_counter() - started
            probes_while_busy = len(prober.round_trips_s)
            probing.cancel()
            await asyncio.gather(probing, return_exceptions=True)

    trips = sorted(prober.round_trips_s)
    bound_s = OffloadSettings().liveness_timeout_ms / 1000
    print(
        f"jobs took {busy_s:.2f} s; {len(trips)} caps probes: median "
        f"{statistics.median(trips) * 1000:.1f} ms, p95 "
        f"{trips[int(len(trips) * 0.95)] * 1000:.1f} ms, max {trips[-1] * 1000:.1f} ms "
        f"(the router's probe timeout: {bound_s * 1000:.0f} ms)"
    )
    assert_code(refused, "BAD_REQUEST")
    assert_code(over, "PAYLOAD_TOO_LARGE")
    assert fits.status == "ok", fits.error
    assert fits.result is not None
    assert fits.result.embeddings is not None
    assert len(fits.result.embeddings) == MAX_EMBED_INPUTS
    assert not prober.failures
    assert probes_while_busy >= 5  # the probes really ran beside the jobs
    assert trips[-1] < bound_s


def assert_code(answer: JobResponse, code: str) -> None:
    assert answer.error is not None, answer.status
    assert answer.error.code == code, answer.error
