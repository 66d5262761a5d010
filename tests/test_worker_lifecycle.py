"""The worker as an operator runs it: a process with a config file, signals, NATS restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from services.bus import wait_for_worker
from services.localnet import free_port
from services.nats_server import NatsServer
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, until
from tools.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent


async def start_worker_process(config: Path, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node_worker",
        "--config",
        str(config),
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_until_serving(nc: NatsClient, node_id: str) -> None:
    await wait_for_worker(nc, llm(node_id), timeout_s=15)


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('node_id = "gpu a"\n', "node_id"),
        ('node_id = "gpu-a"\n[limits]\nllm_concurrency = 0\n', "limits.llm_concurrency"),
        ('node_id = "gpu-a"\n[[backends]]\nkind = "tgi"\nurl = "http://x"\n', "backends.0.kind"),
        ('node_id = "gpu-a"\nbogus_key = 1\n', "bogus_key"),
        ("node_id = [\n", "not valid TOML"),
    ],
)
async def test_bad_config_exits_non_zero_naming_the_field(
    tmp_path: Path, body: str, field: str
) -> None:
    process = await start_worker_process(write_config(tmp_path, body))
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert field in stderr.decode()


async def test_environment_overrides_node_id_and_nats_url(
    tmp_path: Path, nats_server: NatsServer, nc: NatsClient, simulator: Simulator, node_id: str
) -> None:
    config = write_config(
        tmp_path,
        f'node_id = "from-file"\nnats_url = "nats://127.0.0.1:1"\n'
        f'[[backends]]\nkind = "ollama"\nurl = "{simulator.url}"\n',
    )
    process = await start_worker_process(
        config, INFERBUS_NODE_ID=node_id, INFERBUS_NATS_URL=nats_server.url
    )
    try:
        await wait_until_serving(nc, node_id)
        response = await ask(nc, llm(node_id), {"prompt": "hi"})
        assert response.status == "ok"
        assert response.node_id == node_id
    finally:
        process.terminate()
        await process.communicate()


async def test_sigterm_finishes_running_jobs_then_exits_zero(
    tmp_path: Path, nats_server: NatsServer, nc: NatsClient, simulator: Simulator, node_id: str
) -> None:
    simulator.latency_ms = 700
    config = write_config(
        tmp_path,
        f'node_id = "{node_id}"\nnats_url = "{nats_server.url}"\ndrain_grace_s = 10\n'
        f'[[backends]]\nkind = "ollama"\nurl = "{simulator.url}"\n',
    )
    process = await start_worker_process(config)
    await wait_until_serving(nc, node_id)
    running = asyncio.create_task(ask(nc, llm(node_id), {"prompt": "finish me"}))
    await until(lambda: simulator.open_connections > 0)
    process.send_signal(signal.SIGTERM)
    response = await running
    await asyncio.wait_for(process.communicate(), 15)
    assert response.status == "ok"
    assert process.returncode == 0
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(llm(node_id), b'{"prompt": "anyone?"}', timeout=1)


async def test_worker_survives_a_nats_server_restart(
    simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    port = free_port()
    server = NatsServer(port=port)
    await server.start()
    async with start_worker(nats_url=[server.url], backends=[backend(simulator.url)]):
        client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        try:
            assert (await ask(client, llm(node_id), {"prompt": "before"})).status == "ok"
            await server.stop()
            server = NatsServer(port=port)
            await server.start()
            async with asyncio.timeout(15):
                while True:
                    try:
                        response = await ask(client, llm(node_id), {"prompt": "after"}, 0.5)
                        break
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                        await asyncio.sleep(0.1)
            assert response.status == "ok"
        finally:
            await client.close()
            await server.stop()


async def test_req_without_nats_fails_fast_with_a_clear_message() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "req",
        "gpu-a",
        "hi",
        "--server",
        f"nats://127.0.0.1:{free_port()}",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "cannot reach NATS" in stderr.decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_worker_waiting_for_nats_stops_on_a_signal(
    tmp_path: Path, simulator: Simulator, node_id: str, signum: signal.Signals
) -> None:
    config = write_config(
        tmp_path,
        f'node_id = "{node_id}"\nnats_url = "nats://127.0.0.1:{free_port()}"\n'
        f'[[backends]]\nkind = "ollama"\nurl = "{simulator.url}"\n',
    )
    process = await start_worker_process(config)
    assert process.stderr is not None
    async with asyncio.timeout(30):  # it says it is connecting before it waits
        while b"connecting to nats" not in await process.stderr.readline():
            pass
    process.send_signal(signum)
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, stderr.decode()


async def test_worker_with_a_wrong_password_exits_2_naming_the_cause(
    tmp_path: Path, simulator: Simulator, node_id: str
) -> None:
    auth = tmp_path / "auth.conf"
    auth.write_text('authorization { user: "worker", password: "right" }\n')
    async with NatsServer(config_file=auth) as server:
        config = write_config(
            tmp_path,
            f'node_id = "{node_id}"\nnats_url = "{server.url}"\n'
            '[nats]\nuser = "worker"\npassword = "wrong"\n'
            f'[[backends]]\nkind = "ollama"\nurl = "{simulator.url}"\n',
        )
        process = await start_worker_process(config)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "Authorization Violation" in stderr.decode()


@pytest.mark.parametrize("replicas", [False, True])
async def test_two_workers_with_one_node_id_are_named_unless_they_are_replicas(
    simulator: Simulator, start_worker: WorkerFactory, replicas: bool
) -> None:
    settings = {"backends": [backend(simulator.url)], "heartbeat_s": 0.2, "replicas": replicas}
    async with start_worker(**settings) as first, start_worker(**settings) as second:
        if not replicas:
            await until(lambda: bool(first.twins and first.twins.twins), timeout_s=10)
            await until(lambda: bool(second.twins and second.twins.twins), timeout_s=10)
    if replicas:
        assert (first.twins, second.twins) == (None, None)
    else:
        assert first.twins is not None
        assert second.twins is not None
        assert first.twins.twins == frozenset({second.instance})
        assert second.twins.twins == frozenset({first.instance})
