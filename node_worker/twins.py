"""Two workers announcing one node id: an operator error the worker names.

A second `inferbus up`, or a copied config, starts another process with the same node id:
both take jobs from the same queue group and their heartbeats overwrite each other in
every router's view. Each worker listens to its own id's heartbeats and warns, once per
other process, when one comes from a process that is not itself (`Capabilities.instance`)
— unless the node is configured with `replicas = true` (deliberate replicas).
"""

from __future__ import annotations

import contextlib
import logging

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.bus import relayed_by_jetstream
from services.capabilities import Capabilities, decode_capabilities
from services.subjects import Subjects

log = logging.getLogger("inferbus.worker")


def is_twin(record: Capabilities, node_id: str, own_instance: str) -> bool:
    """Whether a heartbeat is another process announcing our node id."""
    return (
        record.node_id == node_id
        and record.instance is not None
        and record.instance != own_instance
    )


class TwinWatch:
    def __init__(self, nc: NatsClient, subjects: Subjects, node_id: str, instance: str) -> None:
        self._nc = nc
        self._subject = subjects.capabilities(node_id)
        self._node_id = node_id
        self._instance = instance
        self._warned: set[str] = set()
        self._subscription: Subscription | None = None

    @property
    def twins(self) -> frozenset[str]:
        """The other instances seen announcing this node id."""
        return frozenset(self._warned)

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(self._subject, cb=self._seen)

    async def _seen(self, msg: Msg) -> None:
        if relayed_by_jetstream(msg.headers):
            return  # not a process announcing itself (services.bus.relayed_by_jetstream)
        record = decode_capabilities(msg.data)
        if record is None or not is_twin(record, self._node_id, self._instance):
            return
        assert record.instance is not None
        if record.instance in self._warned:
            return
        self._warned.add(record.instance)
        log.warning(
            "another worker process (instance %s) announces node id %r too: two workers "
            "with one id share its jobs and overwrite each other's record; give each its "
            "own node_id, or set replicas = true if they are deliberate replicas",
            record.instance,
            self._node_id,
            extra={"node_id": self._node_id},
        )

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
