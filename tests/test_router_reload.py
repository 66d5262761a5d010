"""Reloading the router's config while it serves: SIGHUP and `POST /admin/reload`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from router.config import load_router_settings
from router.service import RouterService
from services.localnet import free_port
from services.nats_server import NatsServer
from tests.conftest import WorkerFactory, backend
from tests.jobs import until
from tools.simulator import SimModel, Simulator

ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"name": "ops", "key": "key-admin", "admin": True}


def write_config(path: Path, nats_url: str, port: int, tenants: list[Any], **extra: Any) -> None:
    config = {
        "nats_url": nats_url,
        "http": {"host": "127.0.0.1", "port": port, "api_keys": tenants},
    }
    path.write_text(yaml.safe_dump({**config, **extra}))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_reload_swaps_keys_and_keeps_what_is_in_flight(
    tmp_path: Path, nats_server: NatsServer, start_worker: WorkerFactory
) -> None:
    path = tmp_path / "router.yml"
    write_config(path, nats_server.url, 0, [ADMIN, {"name": "app", "key": "key-old"}])
    job = {"prompt": "x", "model": "m:1b"}
    async with (
        Simulator(models=[SimModel("m:1b")], latency_ms=800) as sim,
        start_worker(backends=[backend(sim.url)]),
        RouterService(load_router_settings(path), config_path=path) as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        in_flight = asyncio.ensure_future(http.post("/infer", json=job, headers=bearer("key-old")))
        await asyncio.sleep(0.2)
        write_config(path, nats_server.url, 0, [ADMIN, {"name": "app", "key": "key-new", "rpm": 2}])
        not_admin = await http.post("/admin/reload", headers=bearer("key-old"))
        reloaded = await http.post("/admin/reload", headers=bearer("key-admin"))
        new_key = await http.post("/infer", json=job, headers=bearer("key-new"))
        over_new_limit = await http.post("/infer", json=job, headers=bearer("key-new"))
        old_key = await http.post("/infer", json=job, headers=bearer("key-old"))
        finished = await in_flight
    assert not_admin.status_code == 403
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["applied"] == ["http.api_keys"]
    assert new_key.status_code == 200
    # The new limits hold at once, over what the tenant used before the reload.
    assert over_new_limit.status_code == 429
    assert old_key.status_code == 401  # a removed key stops working at once
    assert finished.status_code == 200  # in flight during the reload: answered


async def test_a_bad_file_on_reload_keeps_the_old_config_and_says_why(
    tmp_path: Path, nats_server: NatsServer, simulator: Simulator, start_worker: WorkerFactory
) -> None:
    path = tmp_path / "router.yml"
    write_config(path, nats_server.url, 0, [ADMIN, {"name": "app", "key": "key-app"}])
    job = {"prompt": "x", "model": "llama3:8b"}
    async with (
        start_worker(backends=[backend(simulator.url)]),
        RouterService(load_router_settings(path), config_path=path) as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        write_config(path, nats_server.url, 0, [ADMIN, {"name": "app", "key": "k", "weight": 0}])
        bad = await http.post("/admin/reload", headers=bearer("key-admin"))
        path.write_text("nats_url: [unclosed")
        broken = await http.post("/admin/reload", headers=bearer("key-admin"))
        write_config(path, nats_server.url, 0, [ADMIN, {"name": "b", "key_env": "P18_UNSET_KEY"}])
        unset = await http.post("/admin/reload", headers=bearer("key-admin"))
        still = await http.post("/infer", json=job, headers=bearer("key-app"))
    assert bad.status_code == 400
    assert "weight" in bad.json()["error"]["message"]
    assert broken.status_code == 400
    assert unset.status_code == 400
    assert "P18_UNSET_KEY" in unset.json()["error"]["message"]
    assert still.status_code == 200


async def test_sighup_reloads_the_keys_of_a_running_router(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    path = tmp_path / "router.yml"
    port = free_port()
    write_config(path, nats_server.url, port, [{"name": "app", "key": "key-old"}])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--config", str(path), "--log-level", "WARNING",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await http.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            before = await http.get("/queue", headers=bearer("key-new"))
            write_config(path, nats_server.url, port, [{"name": "app", "key": "key-new"}])
            process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(15):
                while True:
                    if (await http.get("/queue", headers=bearer("key-new"))).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
            old = await http.get("/queue", headers=bearer("key-old"))
        assert process.returncode is None  # SIGHUP reloads, it does not stop the router
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
    assert before.status_code == 401
    assert old.status_code == 401


def profiles(model: str) -> dict[str, Any]:
    """One profile, the default, whose fleet model is `model`."""
    return {
        "llm_profiles": {"chat": {"model": model}},
        "selection_policies": {"chat": {"prefer": [model]}},
        "default_profile": "chat",
    }


async def test_keyed_calls_resolve_the_profiles_a_reload_brought(
    tmp_path: Path, nats_server: NatsServer, start_worker: WorkerFactory
) -> None:
    """A key first used with `model` omitted is the job of the model that resolves to now:
    after a reload moved the default profile from a:1b to b:1b, a duplicate naming a:1b
    is another job (422), not a replay of b:1b's answer."""
    path = tmp_path / "router.yml"
    write_config(path, nats_server.url, 0, [ADMIN], **profiles("a:1b"))
    key = {"Idempotency-Key": "order-1", **bearer("key-admin")}
    async with (
        Simulator(models=[SimModel("a:1b"), SimModel("b:1b")]) as sim,
        start_worker(backends=[backend(sim.url)]),
        RouterService(load_router_settings(path), config_path=path) as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        await until(lambda: bool(router.fleet.nodes))
        write_config(path, nats_server.url, 0, [ADMIN], **profiles("b:1b"))
        reloaded = await http.post("/admin/reload", headers=bearer("key-admin"))
        first = await http.post("/infer", json={"prompt": "x"}, headers=key)
        same = await http.post("/infer", json={"prompt": "x", "model": "b:1b"}, headers=key)
        other = await http.post("/infer", json={"prompt": "x", "model": "a:1b"}, headers=key)
    assert reloaded.json()["applied"] == ["selection"], reloaded.text
    assert first.json()["model"] == "b:1b", first.text
    assert same.json()["cached"] is True
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "IDEMPOTENCY_MISMATCH"
    assert sim.calls["b:1b"] == 1
    assert sim.calls["a:1b"] == 0
