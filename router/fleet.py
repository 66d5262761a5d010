"""The router's live view of the fleet (NCS): the newest record of every node.

Fed by `ncs.capabilities.*` heartbeats and, at start, by one `ncs.discover`
scatter-gather so the view is complete before the first request. A node whose record is
older than its `ttl_s` is stale (shown, never selected); after `drop_after_ttls` ttls it is
forgotten. `candidates` (pure over the view) is what selection chooses from.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from router.candidates import Candidate
from services.bus import flush_interest
from services.capabilities import Capabilities, decode_capabilities
from services.fleet_scan import collect_fleet
from services.lifecycle import AsyncService
from services.subjects import Subjects

log = logging.getLogger("inferbus.router.fleet")


@dataclass(frozen=True)
class NodeView:
    record: Capabilities
    received_s: float  # router's monotonic clock when the record arrived

    def age_s(self, now_s: float) -> float:
        return max(0.0, now_s - self.received_s)

    def stale(self, now_s: float) -> bool:
        return self.age_s(now_s) > self.record.ttl_s


def _slot_kind(model_type: str) -> str:
    return "vision" if model_type == "vision" else "llm"


def candidates_of(
    nodes: Iterable[NodeView],
    *,
    now_s: float,
    local_node: str | None,
    router_inflight: Mapping[tuple[str, str], int],
) -> list[Candidate]:
    """Every model on every fresh node, with load and age (pure).

    Load is the larger of the node's last heartbeat and the router's own in-flight count
    for that node: the heartbeat lags, and the router does not see other routers' work.
    """
    found: list[Candidate] = []
    for view in nodes:
        if view.stale(now_s):
            continue
        record = view.record
        for model in record.served_models:
            kind = _slot_kind(model.type)
            load = record.load.get(kind)
            own = router_inflight.get((record.node_id, kind), 0)
            found.append(
                Candidate(
                    name=model.name,
                    type=model.type,
                    node=record.node_id,
                    local=record.node_id == local_node,
                    node_age_s=round(view.age_s(now_s), 3),
                    runtime=model.runtime,
                    running=model.running,
                    size_gb=model.size_gb,
                    inflight=max(load.inflight if load else 0, own),
                    capacity=load.capacity if load else 1,
                )
            )
    return found


class FleetView(AsyncService):
    def __init__(
        self,
        nc: NatsClient,
        subjects: Subjects,
        *,
        clock: Callable[[], float],
        local_node: str | None = None,
        drop_after_ttls: float = 10,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self.clock = clock
        self.local_node = local_node
        self._listeners: list[Callable[[Capabilities], None]] = []
        self._drop_after_ttls = drop_after_ttls
        self.nodes: dict[str, NodeView] = {}
        self.inflight: Counter[tuple[str, str]] = Counter()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(
            self._subjects.all_capabilities(), cb=self._on_record
        )
        await flush_interest(self._nc)
        await self.discover()

    async def discover(self) -> None:
        """Ask every node at once; the view is complete when this returns."""
        for record in await collect_fleet(self._nc, self._subjects):
            self.take(record)

    async def _on_record(self, msg: Msg) -> None:
        record = decode_capabilities(msg.data)
        if record is not None:
            self.take(record)

    def on_record(self, listener: Callable[[Capabilities], None]) -> None:
        """Call `listener` with every record the view takes."""
        self._listeners.append(listener)

    def take(self, record: Capabilities) -> None:
        """Keep a record unless a newer one from the same node is here already.

        Newer by the node's own clock (`ts`), not `seq`: a restarted worker counts from 1.
        """
        known = self.nodes.get(record.node_id)
        if known is not None and known.record.ts > record.ts:
            return
        self.nodes[record.node_id] = NodeView(record, self.clock())
        for listener in self._listeners:
            listener(record)
        self._forget_gone()

    def _forget_gone(self) -> None:
        now = self.clock()
        for node_id, view in list(self.nodes.items()):
            if view.age_s(now) > view.record.ttl_s * self._drop_after_ttls:
                del self.nodes[node_id]
                log.info("node %s forgotten: no record for %.0f s", node_id, view.age_s(now))

    def candidates(self) -> list[Candidate]:
        return candidates_of(
            self.nodes.values(),
            now_s=self.clock(),
            local_node=self.local_node,
            router_inflight=self.inflight,
        )

    @contextlib.contextmanager
    def job_on(self, node_id: str, model_type: str) -> Iterator[None]:
        """Count a job the router has in flight on a node while the block runs."""
        key = (node_id, _slot_kind(model_type))
        self.inflight[key] += 1
        try:
            yield
        finally:
            self.inflight[key] -= 1

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
