"""The router's start and stop: HTTP
at once whatever NATS does, signals honoured at every moment, fatal causes are exit 2."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from node_worker.backends import Backend
from node_worker.config import BackendConfig, Health
from node_worker.discovery import discover
from router.service import StartupError
from services.localnet import free_port
from services.nats_server import NatsServer
from services.runtimes.base import ModelInfo
from services.runtimes.ollama import OllamaRuntime
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import until
from tools.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
OPS_NATS = ROOT / "ops" / "nats"


async def test_http_serves_health_and_the_local_runtime_while_nats_is_down(
    simulator: Simulator, start_router: RouterFactory, start_worker: WorkerFactory, node_id: str
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    local = {"kind": "ollama", "url": simulator.url}
    async with (
        start_router(nats_url=[url], local_node="here", local_runtime=local) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        health = await http.get("/health")
        ready = await http.get("/ready")
        served = await http.post("/infer", json={"prompt": "hi", "model": "llama3:8b"})
        async with (
            NatsServer(port=port),
            start_worker(nats_url=[url], backends=[backend(simulator.url)]),
        ):
            await until(lambda: node_id in router.fleet.nodes, timeout_s=15)
            ready_after = await http.get("/ready")
            remote = await http.post("/infer", json={"prompt": "hi", "model": "llama3:8b"})
    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["nats_connected"] is False
    assert served.status_code == 200, served.text
    assert served.json()["route"]["via"] == "local"
    assert ready_after.status_code == 200
    assert remote.json()["route"]["via"] == "remote"


def router_config(tmp_path: Path, nats_url: str, port: int, nats: str = "") -> Path:
    config = tmp_path / "router.yml"
    config.write_text(f'nats_url: "{nats_url}"\n{nats}http:\n  host: "127.0.0.1"\n  port: {port}\n')
    return config


async def run_router(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--config", str(config), "--log-level", "WARNING",
        cwd=ROOT, env=os.environ.copy(), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_a_taken_port_is_named_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await run_router(router_config(tmp_path, "nats://127.0.0.1:1", port))
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert f"port {port} is in use" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_a_taken_port_in_process_is_a_startup_error(start_router: RouterFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"port {port} is in use"):
            async with start_router(http={"host": "127.0.0.1", "port": port}):
                pass


async def test_sigterm_is_honoured_while_nats_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    process = await run_router(router_config(tmp_path, f"nats://127.0.0.1:{free_port()}", port))
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            async with asyncio.timeout(20):
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0


async def test_bad_nats_credentials_are_exit_2_with_the_cause(tmp_path: Path) -> None:
    async with NatsServer(config_file=OPS_NATS / "accounts.conf") as server:
        nats = 'nats:\n  user: "router"\n  password: "wrong"\n'
        process = await run_router(router_config(tmp_path, server.url, free_port(), nats))
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 2
    assert "credentials" in stderr.decode()
    assert "authorization violation" in stderr.decode().lower()


class BrokenAdapter(OllamaRuntime):
    """An adapter with a bug: its probe raises something no adapter should."""

    async def health(self) -> float:
        raise KeyError("a bug")

    async def list_models(self) -> list[ModelInfo]:
        raise KeyError("a bug")


async def test_one_adapter_raising_does_not_stop_the_others_rediscovery(
    simulator: Simulator,
) -> None:
    async with httpx.AsyncClient() as http:
        good = Backend(
            BackendConfig(kind="ollama", url=simulator.url),
            OllamaRuntime(simulator.url, http),
        )
        broken = Backend(
            BackendConfig(kind="ollama", url="http://127.0.0.1:1"),
            BrokenAdapter("http://127.0.0.1:1", http),
        )
        catalog = await discover([broken, good], Health(), relist=True)
    assert broken.state == "unhealthy"
    assert "KeyError" in (broken.last_error or "")
    assert good.state == "healthy"
    assert catalog.models


async def test_nats_gone_under_a_running_router_is_a_typed_answer_and_no_breaker(
    simulator: Simulator,
    start_router: RouterFactory,
    start_worker: WorkerFactory,
    private_nats: NatsServer,
    node_id: str,
) -> None:
    """Item 11: a NATS error on a closed connection escaped as a plain-text 500."""
    job = {"prompt": "hi", "model": "llama3:8b"}
    async with (
        start_worker(nats_url=[private_nats.url], backends=[backend(simulator.url)]),
        start_router(nats_url=[private_nats.url]) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        await until(lambda: node_id in router.fleet.nodes)
        await private_nats.stop()
        await until(lambda: not router.nc.is_connected)
        answers = [await http.post("/infer", json=job), await http.post("/infer", json=job)]
        nodes = (await http.get("/nodes")).json()["nodes"]
    assert [a.status_code for a in answers] == [503, 503]
    assert [a.json()["error"]["code"] for a in answers] == ["NO_ROUTE", "NO_ROUTE"]
    assert all(n["breakers"].get("llm", "closed") == "closed" for n in nodes)


async def test_a_failed_start_up_step_after_the_connect_exits_with_its_cause(
    tmp_path: Path,
) -> None:
    """The shared idempotency store needs JetStream; a server without it is said, not
    served around silently (exit 1: not a config error a restart cannot mend)."""
    async with NatsServer(port=free_port()) as server:  # no JetStream
        store = f"idempotency:\n  store: jetstream\n  seal_key: {'0f' * 32}\n"
        process = await run_router(router_config(tmp_path, server.url, free_port(), store))
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 1
    assert "NATS start-up failed" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_a_router_with_the_shared_store_and_no_seal_key_does_not_start(
    tmp_path: Path,
) -> None:
    async with NatsServer(port=free_port(), jetstream_dir=tmp_path / "js") as server:
        store = "idempotency:\n  store: jetstream\n"
        process = await run_router(router_config(tmp_path, server.url, free_port(), store))
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 2
    assert "idempotency.seal_key is needed" in stderr.decode()
    assert "Traceback" not in stderr.decode()
