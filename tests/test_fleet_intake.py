"""Record intake over a real nats-server: only a node speaks for itself, bounds hold, and
the router routes correctly and stays responsive while hundreds of nodes' records flood in.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from router.service import RouterService
from services.capabilities import Capabilities, Load, ServedModel, encode_capabilities
from services.subjects import Subjects
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import until
from tools.simfleet import SimNode, SimulatedFleet, random_nodes
from tools.simulator import Simulator

SUBJECTS = Subjects()


def forged(claimed: str, *models: str, ts: float = 4e9, seq: int = 10**9) -> bytes:
    """A record saying it is `claimed`, with a far-future ts and a huge seq."""
    return encode_capabilities(
        Capabilities(
            node_id=claimed,
            version="evil",
            seq=seq,
            ts=ts,
            ttl_s=3600,
            served_models=tuple(
                ServedModel(name=name, type="llm", runtime="ollama", size_gb=999, running=True)
                for name in models
            ),
            load={"llm": Load(inflight=0, capacity=64)},
        )
    )


def fleet_of(router: RouterService) -> dict[str, object]:
    return dict(router.fleet.nodes) if router.fleet else {}


async def test_record_whose_body_names_another_node_is_ignored_and_logged(
    nc: NatsClient,
    simulator: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    attacker = f"{node_id}-a"
    caplog.set_level(logging.WARNING, logger="inferbus.router.fleet")
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        for _ in range(3):  # logged once, however often it is tried
            await nc.publish(SUBJECTS.capabilities(attacker), forged(node_id, "llama3:8b"))
        await nc.publish(SUBJECTS.capabilities(attacker), forged(attacker, "bait:1b", seq=1))
        await until(lambda: attacker in fleet_of(router))
        answers = [
            (await http.post("/infer", json={"prompt": f"hi {i}", "model": "llama3:8b"})).json()
            for i in range(10)
        ]
        victim = router.fleet.nodes[node_id].record if router.fleet else None
    assert victim is not None
    assert victim.version != "evil"
    assert {a["route"]["node"] for a in answers} == {node_id}
    forged_logs = [r for r in caplog.records if "forged" in r.getMessage()]
    assert len(forged_logs) == 1
    assert attacker in forged_logs[0].getMessage()


async def test_far_future_ts_does_not_shadow_the_nodes_later_records(
    nc: NatsClient, start_router: RouterFactory, node_id: str
) -> None:
    async with start_router() as router:
        await nc.publish(SUBJECTS.capabilities(node_id), forged(node_id, "old:1b", ts=4e9, seq=1))
        await until(lambda: node_id in fleet_of(router))
        later = forged(node_id, "new:1b", ts=1.0, seq=2)  # a ts long before the first one's
        await nc.publish(SUBJECTS.capabilities(node_id), later)
        assert router.fleet is not None
        await until(
            lambda: router.fleet is not None and router.fleet.nodes[node_id].record.seq == 2
        )
        served = {m.name for m in router.fleet.nodes[node_id].record.served_models}
    assert served == {"new:1b"}


async def test_invented_nodes_beyond_the_limit_are_refused_and_real_traffic_is_unaffected(
    nc: NatsClient,
    simulator: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="inferbus.router.fleet")
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router(fleet={"max_nodes": 20}) as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        invented = [f"{node_id}-fake{i}" for i in range(300)]
        for fake in invented:
            await nc.publish(SUBJECTS.capabilities(fake), forged(fake, "bait:1b", seq=1))
        await nc.flush()
        await until(lambda: router.fleet is not None and router.fleet.refusals.refused >= 281)
        answers = [
            await http.post("/infer", json={"prompt": f"job {i}", "model": "llama3:8b"})
            for i in range(20)
        ]
        known = fleet_of(router)
    assert len(known) == 20
    assert node_id in known
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.json()["route"]["node"] for a in answers} == {node_id}
    refusals = [r for r in caplog.records if "fleet_full" in r.getMessage()]
    assert len(refusals) == 281  # once per refused node


async def test_oversized_and_overfull_records_are_refused(
    nc: NatsClient, start_router: RouterFactory, node_id: str
) -> None:
    many = [f"m{i}:1b" for i in range(40)]
    async with start_router(fleet={"max_models_per_node": 32, "max_record_bytes": 2048}) as router:
        await nc.publish(SUBJECTS.capabilities(f"{node_id}-big"), forged(f"{node_id}-big", *many))
        await nc.publish(SUBJECTS.capabilities(f"{node_id}-ok"), forged(f"{node_id}-ok", "a:1b"))
        await until(lambda: f"{node_id}-ok" in fleet_of(router))
        assert router.fleet is not None
        refused = router.fleet.refusals.refused
    assert f"{node_id}-big" not in fleet_of(router)
    assert refused == 1


async def test_hundreds_of_simulated_nodes_route_correctly_while_records_flood_in(
    nc: NatsClient, start_router: RouterFactory
) -> None:
    prefix = f"sim{uuid.uuid4().hex[:6]}"
    nodes = random_nodes(prefix, 300, random.Random(3))
    served_by = {node.node_id: {m.name for m in node.models} for node in nodes}
    async with (
        SimulatedFleet(nc, nodes, heartbeat_s=30) as sims,
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        # Discovery's replies end at a quiet gap, which a loaded box can open early; the
        # announcements it asked for still arrive on the records subject.
        await until(lambda: len(fleet_of(router)) >= 300)
        flooding = asyncio.create_task(flood(sims, nodes, rounds=20))
        wanted = [random.Random(i).choice(sorted(served_by[nodes[i].node_id])) for i in range(40)]
        answers: list[tuple[str, httpx.Response]] = []
        while not flooding.done() or len(answers) < len(wanted):
            model = wanted[len(answers) % len(wanted)]
            reply = await http.post("/infer", json={"prompt": "hi", "model": model})
            answers.append((model, reply))
            health = await http.get("/health")
            assert health.status_code == 200
        await flooding
        listed = (await http.get("/v1/models")).json()["data"]
        page = (await http.get("/nodes", params={"limit": 50})).json()
        by_model = (await http.get("/nodes", params={"model": wanted[0], "limit": 1000})).json()
    assert [reply.status_code for _, reply in answers] == [200] * len(answers)
    for model, reply in answers:
        node = reply.json()["route"]["node"]
        assert model in served_by[node]
    assert {m["id"] for m in listed} == {m for names in served_by.values() for m in names}
    assert len(page["nodes"]) == 50
    assert page["total"] == 300
    assert page["next"] == page["nodes"][-1]["node_id"]
    assert {n["node_id"] for n in by_model["nodes"]} == {
        node for node, names in served_by.items() if wanted[0] in names
    }
    assert sum(node.served for node in nodes) >= len(answers)


async def flood(sims: SimulatedFleet, nodes: list[SimNode], rounds: int) -> None:
    """Every node re-announces `rounds` times, as fast as the connection takes it."""
    for _ in range(rounds):
        for node in nodes:
            await sims.announce(node)
        await asyncio.sleep(0)


async def test_a_forged_discovery_reply_is_not_taken(
    nc: NatsClient, start_router: RouterFactory, node_id: str
) -> None:
    """Any node may answer the discover inbox; only records on a node's own subject count."""

    async def answer_for_the_victim(msg: Msg) -> None:
        await msg.respond(forged(node_id, "bait:1b"))

    sub = await nc.subscribe(SUBJECTS.discover(), cb=answer_for_the_victim)
    await nc.flush()
    try:
        async with start_router() as router:
            known = fleet_of(router)
    finally:
        await sub.unsubscribe()
    assert node_id not in known


async def test_a_restarted_worker_is_taken_although_its_seq_starts_again(
    simulator: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
) -> None:
    async with start_router() as router:
        fleet = router.fleet
        assert fleet is not None
        async with start_worker(backends=[backend(simulator.url)], heartbeat_s=0.2):
            await until(lambda: node_id in fleet.nodes and fleet.nodes[node_id].record.seq >= 5)
            first_run = fleet.nodes[node_id].record.instance
        async with start_worker(backends=[backend(simulator.url)], heartbeat_s=0.2):
            await until(lambda: fleet.nodes[node_id].record.instance != first_run)
            restarted = fleet.nodes[node_id].record
    assert restarted.seq < 5
    assert restarted.instance
