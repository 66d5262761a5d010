"""Shared fixtures: a real nats-server per test session, unique node ids per test, and
helpers to start workers in front of real HTTP runtimes on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from node_worker.config import WorkerSettings
from node_worker.worker import Worker
from router.config import RouterSettings
from router.service import RouterService
from services.localnet import free_port
from services.nats_server import NatsServer
from tests.cloud_sims import FALLBACK, PRIMARY, TOKENS
from tests.fleets import SETUPS, Fleet, fleet_server
from tests.llamacpp import llama_server
from tools.simulator import SimModel, Simulator

__all__ = ["llama_server"]  # a session fixture, shared by every test module

DEFAULT_MODELS = (SimModel("llama3:8b"), SimModel("llava:7b", vision=True))


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    """With JetStream (`-js`), as the embedded server of `inferbus up` runs: the shared
    idempotency store lives in its KV."""
    async with NatsServer(jetstream_dir=tmp_path_factory.mktemp("jetstream")) as server:
        yield server


@pytest.fixture
async def private_nats() -> AsyncIterator[NatsServer]:
    """A nats-server of the test's own, on a fixed free port: it may be stopped and started
    again (clients reconnect to the same URL)."""
    async with NatsServer(port=free_port()) as server:
        yield server


@pytest.fixture(scope="module", params=SETUPS)
async def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    """A nats-server with the fleet's users, per module and per auth setup: accounts.conf
    as committed, or the operator mode that ops/nats/make_jwt_fleet.py makes."""
    async with fleet_server(request.param, tmp_path_factory.mktemp("fleet")) as running:
        yield running


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def node_id() -> str:
    """A node id no other test uses, so subjects never cross between tests."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(models=list(DEFAULT_MODELS), tokens=8) as sim:
        yield sim


WorkerFactory = Callable[..., AbstractAsyncContextManager[Worker]]


@pytest.fixture
def start_worker(nats_server: NatsServer, node_id: str) -> WorkerFactory:
    """`async with start_worker(backends=[...], **settings) as worker:` — a real worker."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Worker]:
        values: dict[str, Any] = {"node_id": node_id, "nats_url": [nats_server.url]}
        values.update(overrides)
        async with Worker(WorkerSettings(**values)) as worker:
            yield worker

    return start


def backend(url: str, kind: str = "ollama", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "url": url, **extra}


RouterFactory = Callable[..., AbstractAsyncContextManager[RouterService]]


@pytest.fixture
def start_router(nats_server: NatsServer) -> RouterFactory:
    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RouterService]:
        values: dict[str, Any] = {
            "nats_url": [nats_server.url],
            "http": {"host": "127.0.0.1", "port": 0},
        }
        values.update(overrides)
        async with RouterService(RouterSettings(**values)) as service:
            yield service

    return start


@pytest.fixture
async def alpha() -> AsyncIterator[Simulator]:
    """A simulated cloud provider serving PRIMARY (tests/cloud_sims.py)."""
    async with Simulator(models=[SimModel(PRIMARY)], tokens=TOKENS) as sim:
        yield sim


@pytest.fixture
async def beta() -> AsyncIterator[Simulator]:
    """A second simulated provider, serving FALLBACK."""
    async with Simulator(models=[SimModel(FALLBACK)], tokens=TOKENS) as sim:
        yield sim
