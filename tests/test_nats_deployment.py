"""The nats-server configs in ops/nats/ work as committed, with real nats-server processes.

accounts.conf is loaded exactly as written (the client port comes from `-p -1` on the
command line, which overrides the file); the permission tests run on it and on the
operator-mode setup that ops/nats/make_jwt_fleet.py makes (tests/fleets.py). The other
files name fixed ports, hosts and paths an operator would use; the tests render a copy
with those few values replaced (every replaced value must still be in the file) and
leave everything else as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from node_worker.config import Limits
from services.capabilities import decode_capabilities
from services.nats_server import NatsServer
from services.settings import NatsAuth
from services.wire import JobResponse
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.fleets import (
    MONITOR_PORT,
    STORE_DIR,
    Fleet,
    connect_error,
    fleet_server,
    render,
    render_cluster,
)
from tests.jobs import ask, llm, stream, until, vision
from tools.simulator import Simulator

JOB = {"prompt": "hello there", "model": "llama3:8b"}


@contextlib.asynccontextmanager
async def connected(
    url: str, auth: NatsAuth | None = None, errors: list[Exception] | None = None, **options: Any
) -> AsyncIterator[NatsClient]:
    """A client, logged in with `auth` if given; asynchronous errors (such as permission
    violations) are collected in `errors`."""

    async def remember(error: Exception) -> None:
        if errors is not None:
            errors.append(error)

    credentials = auth.connect_options() if auth else {}
    client = await nats.connect(url, error_cb=remember, **credentials, **options)
    try:
        yield client
    finally:
        await client.close()


def is_violation(error: Exception) -> bool:
    """The server's `-ERR 'Permissions Violation for ...'`; nats-py lowercases the text."""
    return "permissions violation" in str(error).lower()


async def answered(nc: NatsClient, subject: str, within_s: float = 15) -> JobResponse:
    """The first answer to a job sent until one comes: while interest has not reached this
    server yet, a request fails fast (no responders) or at its own short timeout."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                return await ask(nc, subject, JOB, timeout_s=1)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.05)


# --- accounts.conf and the JWT setup: per-node permissions --------------------------------


async def test_a_worker_and_a_router_work_within_their_committed_permissions(
    fleet: Fleet,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    simulator: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    heartbeats: list[str] = []

    async def heard(msg: Msg) -> None:
        record = decode_capabilities(msg.data)
        if record is not None:
            heartbeats.append(record.node_id)

    async with (
        start_worker(
            node_id="gpu-a",
            nats_url=[fleet.url],
            nats=fleet.auth("gpu-a"),
            backends=[backend(simulator.url)],
            heartbeat_s=0.2,
        ),
        start_router(nats_url=[fleet.url], nats=fleet.auth("router")) as router,
        connected(fleet.url, fleet.auth("router")) as as_router,
        connected(fleet.url, fleet.auth("ops")) as ops,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        await as_router.subscribe("ncs.capabilities.*", cb=heard)
        direct = await ask(as_router, llm("gpu-a"), JOB)
        chunks, final = await stream(as_router, llm("gpu-a"), JOB)
        caps = decode_capabilities(
            (await as_router.request("node.gpu-a.caps", b"", timeout=5)).data
        )
        routed = (await http.post("/infer", json=JOB)).json()
        shown = await http.post("/api/show", json={"model": "llama3:8b"})  # node.gpu-a.show
        ping = await ops.request("$SRV.PING.inferbus-node", b"", timeout=5)
        await until(lambda: "gpu-a" in heartbeats)

    assert direct.status == "ok", direct.error
    assert direct.node_id == "gpu-a"
    assert len(chunks) > 1  # a streamed answer is many messages to one inbox
    assert final.status == "ok", final.error
    assert caps is not None
    assert caps.node_id == "gpu-a"
    assert routed["status"] == "ok", routed
    assert routed["route"]["node"] == "gpu-a"  # the router found the node by ncs.discover
    assert shown.status_code == 200, shown.text
    assert shown.json()["details"]["family"] == "llama"
    assert b'"inferbus-node"' in ping.data
    assert "permissions violation" not in caplog.text.lower()


@pytest.mark.parametrize(
    ("user", "action", "subject"),
    [
        pytest.param("gpu-a", "subscribe", "node.gpu-b.llm.request", id="worker-takes-other-jobs"),
        pytest.param("gpu-a", "subscribe", "node.*.llm.request", id="worker-takes-all-jobs"),
        pytest.param("gpu-a", "publish", "ncs.capabilities.gpu-b", id="worker-poses-as-other"),
        pytest.param("gpu-a", "publish", "node.gpu-b.llm.request", id="worker-sends-jobs"),
        pytest.param("gpu-a", "publish", "$JS.API.INFO", id="worker-asks-jetstream"),
        pytest.param(
            "gpu-a", "publish", "$KV.inferbus_idempotency.n.gpu-a.k", id="worker-writes-kv"
        ),
        pytest.param("router", "subscribe", "node.gpu-a.llm.request", id="router-takes-jobs"),
        pytest.param("router", "publish", "ncs.capabilities.gpu-a", id="router-poses-as-node"),
    ],
)
async def test_a_user_is_refused_what_its_permissions_do_not_allow(
    fleet: Fleet, user: str, action: str, subject: str
) -> None:
    errors: list[Exception] = []

    def refused() -> bool:
        return any(is_violation(error) for error in errors)

    async with (
        connected(fleet.url, fleet.auth(user), errors) as client,
        connected(fleet.url, fleet.auth("ops")) as ops,
    ):
        if action == "subscribe":
            await client.subscribe(subject)
            await until(refused)
            # The server holds no interest for it: a job sent there finds nobody.
            with pytest.raises(nats.errors.NoRespondersError):
                await ops.request(subject.replace("*", "gpu-b"), b"{}", timeout=2)
            leaked = 0
        else:
            watch = await ops.subscribe(subject)
            await ops.flush()
            await client.publish(subject, b"{}")
            await until(refused)
            await ops.flush()  # had the server let it through, it would be here by now
            leaked = watch.pending_msgs
        still_connected = client.is_connected

    violation = next(error for error in errors if is_violation(error))
    assert subject.lower() in str(violation).lower()  # nats-py lowercases the text
    assert leaked == 0
    assert still_connected  # refused, not cut off: a worker keeps serving its own jobs


@pytest.mark.parametrize("node", ["gpu-a", "gpu-b"])
async def test_each_worker_user_serves_the_router_user_its_jobs(
    fleet: Fleet, start_worker: WorkerFactory, simulator: Simulator, node: str
) -> None:
    async with (
        start_worker(
            node_id=node,
            nats_url=[fleet.url],
            nats=fleet.auth(node),
            backends=[backend(simulator.url)],
        ),
        connected(fleet.url, fleet.auth("router")) as as_router,
    ):
        answer = await ask(as_router, llm(node), JOB)
    assert answer.status == "ok", answer.error
    assert answer.node_id == node


async def test_a_wrong_password_is_refused(tmp_path: Path) -> None:
    async with fleet_server("accounts", tmp_path) as fleet:
        error = await connect_error(fleet.url, user="gpu-a", password="not-the-password")
    assert "authorization violation" in str(error).lower()


# --- single.conf ---------------------------------------------------------------------------


# aiohttp (under the worker's httpx transport) warns on any request body over 1 MiB sent
# as bytes; under `filterwarnings = error` that turns the job into INTERNAL. Python
# ignores ResourceWarning by default, so in production it is silent.
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_single_server_carries_a_vision_job_the_default_limit_refuses(
    tmp_path: Path,
    nc: NatsClient,
    start_worker: WorkerFactory,
    simulator: Simulator,
    node_id: str,
) -> None:
    photo = {"prompt": "what is this", "model": "llava:7b", "images": ["A" * 3_000_000]}
    config = render(
        "single.conf", tmp_path, {MONITOR_PORT: "http_port: -1", STORE_DIR: f'"{tmp_path}"'}
    )
    async with (
        NatsServer(config_file=config) as server,
        start_worker(nats_url=[server.url], backends=[backend(simulator.url)]),
        connected(server.url) as client,
    ):
        answer = await ask(client, vision(node_id), photo)
        account = await client.jetstream().account_info()
    with pytest.raises(nats.errors.MaxPayloadError):  # a server with NATS's 1 MB default
        await ask(nc, vision(node_id), photo)

    assert answer.status == "ok", answer.error
    # "8MB" in the file is 8 MiB, the worker's default limits.max_request_bytes.
    assert client.max_payload == Limits().max_request_bytes
    assert account.limits.max_streams == -1  # JetStream is on for this account


# --- cluster-a/b/c.conf: failover -----------------------------------------------------------


async def test_worker_moves_to_a_surviving_server_when_its_server_is_killed(
    tmp_path: Path, start_worker: WorkerFactory, simulator: Simulator, node_id: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a, b, c = [
            await stack.enter_async_context(NatsServer(config_file=config))
            for config in render_cluster(tmp_path)
        ]
        # The worker is given A alone. nats-py adds the servers A announces in INFO
        # (connect_urls, kept current as routes form) to its pool and reconnects to them
        # when A goes. A list of several URLs would be shuffled (no dont_randomize), so
        # the worker might not start on A. Operators should still list all three:
        # gossip only helps once a first connection has been made.
        worker = await stack.enter_async_context(
            start_worker(node_id=node_id, nats_url=[a.url], backends=[backend(simulator.url)])
        )
        client = await stack.enter_async_context(connected(c.url))
        assert worker.nc.connected_url is not None
        assert worker.nc.connected_url.port == a.port
        await until(lambda: len(worker.nc.discovered_servers) == 2, timeout_s=15)

        before = await answered(client, llm(node_id))
        a.kill()
        await until(lambda: worker.nc.stats["reconnects"] >= 1, timeout_s=15)
        after = await answered(client, llm(node_id))
        then = [await ask(client, llm(node_id), JOB, timeout_s=2) for _ in range(5)]
        now_on = worker.nc.connected_url

    assert before.status == "ok", before.error
    assert after.status == "ok", after.error
    assert after.node_id == node_id
    assert [answer.status for answer in then] == ["ok"] * 5
    assert now_on is not None
    assert now_on.port in {b.port, c.port}


# --- tls.conf ---------------------------------------------------------------------------------


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    steps = [
        f"req -x509 {key} -keyout ca-key.pem -out ca.pem -days 1 -subj /CN=inferbus-test-ca",
        f"req {key} -keyout server-key.pem -out server.csr -subj /CN=nats",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial"
        " -out server.pem -days 1 -extfile san.ext",
    ]
    for step in steps:
        subprocess.run(
            [openssl, *step.split()], cwd=certs, check=True, capture_output=True, timeout=30
        )
    return certs


async def test_tls_server_serves_a_worker_that_trusts_its_ca(
    tmp_path: Path,
    certificates: Path,
    start_worker: WorkerFactory,
    simulator: Simulator,
    node_id: str,
) -> None:
    config = render(
        "tls.conf",
        tmp_path,
        {MONITOR_PORT: "http_port: -1", "/etc/nats/certs/": f"{certificates}/"},
    )
    trusting = NatsAuth(tls_ca_file=certificates / "ca.pem")
    async with NatsServer(config_file=config) as server:
        url = f"tls://127.0.0.1:{server.port}"
        async with (
            start_worker(
                node_id=node_id,
                nats_url=[url],
                nats=trusting,
                backends=[backend(simulator.url)],
            ),
            connected(url, **trusting.connect_options()) as client,
        ):
            answer = await ask(client, llm(node_id), JOB)
        greeting = await server_info(server.port)
    assert answer.status == "ok", answer.error
    assert greeting["tls_required"] is True  # no client gets in without TLS
    assert greeting.get("tls_verify", False) is False  # client certificates optional


async def server_info(port: int) -> dict[str, Any]:
    """The INFO a nats-server greets every TCP client with, before any TLS."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    verb, _, payload = line.decode().partition(" ")
    assert verb == "INFO", line
    info: dict[str, Any] = json.loads(payload)
    return info
