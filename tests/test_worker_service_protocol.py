"""Standard NATS service tooling sees the worker (ADR-32), and that costs jobs nothing."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client as NatsClient
from nats.micro.service import ServiceInfo, ServiceStats

from services.simulator import Simulator
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, until


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
        after = ServiceStats.from_dict(json.loads((await nc.request(subject, b"")).data))
    counts = {e.name: (e.num_requests, e.num_errors) for e in after.endpoints}
    assert {e.name: e.num_requests for e in before.endpoints} == {
        "llm": 0,
        "vision": 0,
        "embed": 0,
        "caps": 0,
    }
    assert counts == {"llm": (2, 1), "vision": (0, 0), "embed": (0, 0), "caps": (1, 0)}
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
