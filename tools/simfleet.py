"""Many simulated nodes on one NATS connection, for fleet-scale tests and benchmarks.

Each simulated node speaks the wire contract as a worker does: it publishes a valid
capabilities record (built with `services.capabilities`; its runtime's probe latency and
job counters move from one record to the next, as a real worker's do) on its own
`ncs.capabilities.<id>` every heartbeat, announces itself there when `ncs.discover` is
asked, and answers `node.<id>.llm.request` / `vision.request` jobs with a `JobResponse` that
names the node and model it served, so a test can check where the router sent each job.
One connection carries them all (a few hundred nodes cost one socket, not a few hundred);
each node has its own job subscriptions, so a node that is removed stops being a
responder, as a dead worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.capabilities import (
    BackendStats,
    Capabilities,
    Load,
    ModelType,
    RuntimeStatus,
    ServedModel,
    encode_capabilities,
    record_ttl_s,
)
from services.lifecycle import AsyncService
from services.subjects import Subjects
from services.wire import JobResponse, Result, Usage, encode

__all__ = ["SimNode", "SimulatedFleet", "random_nodes"]

_BATCH_GAP_S = 0.05


@dataclass
class SimNode:
    node_id: str
    models: tuple[ServedModel, ...]
    capacity: int = 4
    seq: int = 0
    instance: str = field(default_factory=lambda: secrets.token_hex(6))
    served: int = 0  # jobs answered

    def record(self, ttl_s: float) -> Capabilities:
        self.seq += 1
        return Capabilities(
            node_id=self.node_id,
            version="simfleet",
            seq=self.seq,
            instance=self.instance,
            ts=round(time.time(), 3),
            ttl_s=ttl_s,
            runtimes=(
                RuntimeStatus(
                    kind="ollama",
                    url="http://127.0.0.1:11434",
                    state="healthy",
                    latency_ms=round(0.8 + (self.seq % 7) * 0.13, 2),
                    models=len(self.models),
                    stats=BackendStats(invocations=self.served, tokens_out=4 * self.served),
                ),
            ),
            served_models=self.models,
            load={
                "llm": Load(inflight=0, capacity=self.capacity),
                "vision": Load(inflight=0, capacity=self.capacity),
            },
        )


MODEL_POOL: tuple[tuple[str, ModelType, float], ...] = tuple(
    [(f"llm-{i:02d}:7b", "llm", 4.0 + i % 5) for i in range(40)]
    + [(f"coder-{i}:7b", "code", 4.5) for i in range(5)]
    + [("moondream:1.8b", "vision", 1.7), ("minicpm-v:8b", "vision", 5.5)]
    + [(f"llava-{i}:7b", "vision", 4.7) for i in range(3)]
)


def random_nodes(
    prefix: str, count: int, rng: random.Random, *, models: tuple[int, int] = (5, 20)
) -> list[SimNode]:
    """`count` nodes with `models` (min, max) models each from a pool of ~50."""
    nodes = []
    for i in range(count):
        picked = rng.sample(MODEL_POOL, rng.randint(*models))
        served = tuple(
            ServedModel(
                name=name, type=kind, runtime="ollama", size_gb=size, running=rng.random() < 0.3
            )
            for name, kind, size in sorted(picked)
        )
        nodes.append(SimNode(f"{prefix}-{i:05d}", served))
    return nodes


class SimulatedFleet(AsyncService):
    """Publishes the nodes' heartbeats and answers their jobs until stopped."""

    def __init__(
        self,
        nc: NatsClient,
        nodes: Sequence[SimNode],
        *,
        subjects: Subjects | None = None,
        heartbeat_s: float = 10.0,
    ) -> None:
        self._nc = nc
        self.nodes = {node.node_id: node for node in nodes}
        self._subjects = subjects or Subjects()
        self.heartbeat_s = heartbeat_s
        self._subscriptions: list[Subscription] = []
        self._node_subscriptions: dict[str, list[Subscription]] = {}
        self._beating: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for node_id in list(self.nodes):
            await self._listen(node_id)
        self._subscriptions.append(
            await self._nc.subscribe(self._subjects.discover(), cb=self._announce_all)
        )
        await self.announce_all()
        self._beating = asyncio.create_task(self._beat_forever())

    async def _listen(self, node_id: str) -> None:
        jobs = [
            await self._nc.subscribe(self._subjects.job(node_id, kind), cb=self._answer)
            for kind in ("llm", "vision")
        ]
        # Routers probe a node that holds their jobs on its caps subject: a node that
        # never answers would be taken for dead.
        caps = await self._nc.subscribe(self._subjects.caps(node_id), cb=self._answer_caps)
        self._node_subscriptions[node_id] = [*jobs, caps]

    async def _answer_caps(self, msg: Msg) -> None:
        node = self.nodes.get(msg.subject.split(".")[-2])
        if node is not None and msg.reply:
            await self._nc.publish(
                msg.reply, encode_capabilities(node.record(record_ttl_s(self.heartbeat_s)))
            )

    async def add(self, node: SimNode) -> None:
        """A node joins: it takes jobs, then announces itself."""
        self.nodes[node.node_id] = node
        await self._listen(node.node_id)
        await self._nc.flush()
        await self.announce(node)

    async def announce_all(self, reply: str | None = None) -> None:
        for node in list(self.nodes.values()):
            data = await self.announce(node)
            if reply:  # as a worker answers `ncs.discover`: its own subject first
                await self._nc.publish(reply, data)

    async def announce(self, node: SimNode) -> bytes:
        data = encode_capabilities(node.record(record_ttl_s(self.heartbeat_s)))
        await self._nc.publish(self._subjects.capabilities(node.node_id), data)
        return data

    async def _announce_all(self, msg: Msg) -> None:
        await self.announce_all(msg.reply or None)

    async def _beat_forever(self) -> None:
        """Spread each round of heartbeats over the interval, as independent nodes would.

        In batches every `_BATCH_GAP_S`, not one timer per node: a thousand wake-ups a
        second would cost the simulator more than the heartbeats themselves.
        """
        while True:
            nodes = list(self.nodes.values())
            rounds = max(1, int(self.heartbeat_s / _BATCH_GAP_S))
            batch = max(1, -(-len(nodes) // rounds))
            for start in range(0, max(1, len(nodes)), batch):
                for node in nodes[start : start + batch]:
                    await self.announce(node)
                await asyncio.sleep(self.heartbeat_s / rounds)

    async def _answer(self, msg: Msg) -> None:
        node_id = msg.subject.split(".")[-3]
        node = self.nodes.get(node_id)
        if node is None or not msg.reply:
            return
        job = json.loads(msg.data)
        node.served += 1
        response = JobResponse(
            job_id=job.get("job_id", ""),
            status="ok",
            node_id=node_id,
            model=job.get("model"),
            runtime="simfleet",
            result=Result(text=f"{node_id} served", finish_reason="stop", usage=Usage()),
        )
        await self._nc.publish(msg.reply, encode(response))

    async def remove(self, node_id: str) -> None:
        """The node dies: no more heartbeats, no more answers, no longer a responder."""
        self.nodes.pop(node_id, None)
        for subscription in self._node_subscriptions.pop(node_id, []):
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def stop(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
            self._beating = None
        for node_id in list(self._node_subscriptions):
            await self.remove(node_id)
        with contextlib.suppress(Exception):
            await self._nc.flush()  # the server has dropped their interest when this returns
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions = []
