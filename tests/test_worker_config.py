"""The worker's configuration as an operator writes it: what the fleet cannot carry is
refused at start (exit 2, the field and its bound named), never found out at every
heartbeat."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from node_worker.config import load_worker_settings
from services.capabilities import MAX_HEARTBEAT_S, MAX_RECORD_TTL_S, record_ttl_s
from services.settings import ConfigError
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import until
from tests.test_worker_llama_server import caps
from tools.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent

NODE = 'node_id = "gpu-a"\n'


async def run_worker(config: Path) -> tuple[int, str]:
    """`python -m node_worker --config FILE`, expected to exit by itself: code, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node_worker", "--config", str(config),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        # The record lives 3 heartbeats; routers refuse a record living over 3,600 s.
        ("heartbeat_s = 1500\n", ["heartbeat_s", "at most 1200 s", "3600 s"]),
        ("heartbeat_s = inf\n", ["heartbeat_s", "at most 1200 s"]),
        # JetStream keeps a bucket's TTL in int64 nanoseconds.
        ("[idempotency]\nttl_s = 1e10\n", ["idempotency.ttl_s", "9223372036"]),
        # A job's timeout_ms is bounded on the wire.
        ("default_timeout_ms = 18014398509481984\n", ["default_timeout_ms"]),
        # Every subject rides one NATS protocol line.
        (f'subject_prefix = "{".".join(["team"] * 60)}"\n', ["subject_prefix", "at most 255"]),
        ('node_id = "gpu a"\n', ["node_id", "subject-safe"]),
    ],
)
async def test_a_setting_the_fleet_cannot_carry_is_exit_2_naming_it_and_its_bound(
    tmp_path: Path, body: str, said: list[str]
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(body if body.startswith("node_id") else NODE + body)
    code, stderr = await run_worker(config)
    assert code == 2
    for words in said:
        assert words in stderr
    assert "Traceback" not in stderr


async def test_a_toml_syntax_error_is_exit_2_with_file_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(NODE + "heartbeat_s 10\n")
    code, stderr = await run_worker(config)
    assert code == 2
    assert f"{config}:2:13: not valid TOML" in stderr


def test_the_longest_heartbeat_makes_the_longest_record_a_router_takes(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(f"{NODE}heartbeat_s = {MAX_HEARTBEAT_S}\n")
    settings = load_worker_settings(config)
    assert record_ttl_s(settings.heartbeat_s) == MAX_RECORD_TTL_S
    config.write_text(f"{NODE}heartbeat_s = {MAX_HEARTBEAT_S + 0.5}\n")
    with pytest.raises(ConfigError, match="heartbeat_s"):
        load_worker_settings(config)


async def test_a_worker_on_the_longest_heartbeat_is_in_the_routers_fleet(
    simulator: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
) -> None:
    async with (
        start_router() as router,
        start_worker(backends=[backend(simulator.url)], heartbeat_s=MAX_HEARTBEAT_S) as worker,
    ):
        await until(lambda: node_id in router.fleet.nodes, timeout_s=15)
        record = await caps(worker.nc, node_id)
        kept = router.fleet.nodes[node_id].record
    assert record.ttl_s == MAX_RECORD_TTL_S
    assert kept.ttl_s == MAX_RECORD_TTL_S
    assert [model.name for model in kept.served_models] == ["llama3:8b", "llava:7b"]
