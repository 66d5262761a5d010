"""Standard NATS service tooling sees the worker (ADR-32), and that costs jobs nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.micro.service import ServiceInfo, ServiceStats

from services.nats_server import NatsServer
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, until
from tools.simulator import Simulator


async def test_info_names_the_node_and_its_endpoints(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]) as worker:
        reply = await nc.request(f"$SRV.INFO.inferbus-node.{worker.service.id}", b"", timeout=5)
    info = ServiceInfo.from_dict(json.loads(reply.data))
    assert info.name == "inferbus-node"
    assert info.metadata == {"node_id": node_id}
    subjects = {endpoint.name: endpoint.subject for endpoint in info.endpoints}
    assert subjects == {
        "llm": f"node.{node_id}.llm.request",
        "vision": f"node.{node_id}.vision.request",
        "embed": f"node.{node_id}.embed.request",
        "caps": f"node.{node_id}.caps",
        "show": f"node.{node_id}.show",
    }
    assert {endpoint.queue_group for endpoint in info.endpoints} == {"node_worker"}


async def test_stats_count_real_jobs_and_errors(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]) as worker:
        subject = f"$SRV.STATS.inferbus-node.{worker.service.id}"
        before = ServiceStats.from_dict(json.loads((await nc.request(subject, b"")).data))
        await ask(nc, llm(node_id), {"prompt": "hi"})
        await ask(nc, llm(node_id), {"prompt": "hi", "model": "nope"})
        await nc.request(f"node.{node_id}.caps", b"", timeout=5)
        await nc.request(f"node.{node_id}.show", b'{"model": "llama3:8b"}', timeout=5)
        await nc.request(f"node.{node_id}.show", b'{"model": "nope"}', timeout=5)
        after = ServiceStats.from_dict(json.loads((await nc.request(subject, b"")).data))
    counts = {e.name: (e.num_requests, e.num_errors) for e in after.endpoints}
    assert {e.name: e.num_requests for e in before.endpoints} == {
        "llm": 0,
        "vision": 0,
        "embed": 0,
        "caps": 0,
        "show": 0,
    }
    assert counts == {
        "llm": (2, 1),
        "vision": (0, 0),
        "embed": (0, 0),
        "caps": (1, 0),
        "show": (2, 1),
    }
    llm_stats = next(e for e in after.endpoints if e.name == "llm")
    assert "MODEL_NOT_FOUND" in (llm_stats.last_error or "")
    assert llm_stats.processing_time > 0


async def test_slow_jobs_still_run_side_by_side_with_the_service_protocol_on(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.latency_ms = 500
    async with start_worker(
        backends=[backend(simulator.url)], limits={"llm_concurrency": 6}
    ) as worker:
        jobs = [
            asyncio.create_task(ask(nc, llm(node_id), {"prompt": f"slow {i}"})) for i in range(6)
        ]
        await until(lambda: simulator.open_connections >= 6)
        at_once = simulator.open_connections
        pinged = await nc.request(f"$SRV.PING.inferbus-node.{worker.service.id}", b"", timeout=5)
        answers = await asyncio.gather(*jobs)
        stats = ServiceStats.from_dict(
            json.loads(
                (await nc.request(f"$SRV.STATS.inferbus-node.{worker.service.id}", b"")).data
            )
        )
    assert at_once == 6
    assert json.loads(pinged.data)["type"] == "io.nats.micro.v1.ping_response"
    assert all(answer.status == "ok" for answer in answers)
    assert next(e for e in stats.endpoints if e.name == "llm").num_requests == 6


JS_CHECKS = Path(__file__).resolve().parent / "js"


@pytest.fixture(scope="session")
def js_client() -> Path:
    """tests/js with @nats-io/services installed by `npm install`; skip without node."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    if not (JS_CHECKS / "node_modules" / "@nats-io" / "services").is_dir():
        installed = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent"],
            cwd=JS_CHECKS,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if installed.returncode != 0:
            pytest.skip(f"npm install failed: {installed.stderr.strip()[-300:]}")
    return JS_CHECKS / "srv_stats.mjs"


async def test_stats_read_by_the_js_services_client_carry_an_object_not_null_as_data(
    nats_server: NatsServer,
    simulator: Simulator,
    start_worker: WorkerFactory,
    node_id: str,
    js_client: Path,
) -> None:
    async with start_worker(backends=[backend(simulator.url)]) as worker:
        # The raw reply first: no endpoint says "data": null (jsm.go's schema wants an object).
        nc = await nats.connect(nats_server.url)
        try:
            subject = f"$SRV.STATS.inferbus-node.{worker.service.id}"
            raw = json.loads((await nc.request(subject, b"", timeout=5)).data)
        finally:
            await nc.close()
        node = await asyncio.create_subprocess_exec(
            "node",
            str(js_client),
            nats_server.url,
            "inferbus-node",
            cwd=js_client.parent,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, err.decode()
    names = [endpoint["name"] for endpoint in raw["endpoints"]]
    assert sorted(names) == ["caps", "embed", "llm", "show", "vision"]
    assert [endpoint.get("data", {}) for endpoint in raw["endpoints"]] == [{}] * len(names)
    seen = [endpoint for endpoint in json.loads(out) if endpoint["name"] in ("llm", "caps")]
    assert seen
    assert all(endpoint["data"] == {} for endpoint in seen)
