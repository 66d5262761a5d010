"""The node on the bus: its capabilities record, published and answered.

Every `heartbeat_s` the worker probes its runtimes and publishes the record on
`ncs.capabilities.<id>`; a change that cannot wait (a slot kind filling up or freeing)
publishes at once. The same record answers `node.<id>.caps` and the fleet-wide
`ncs.discover` scatter-gather. `build_capabilities` is the pure part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from node_worker.admission import SlotLoad
from node_worker.backends import Backend
from node_worker.catalog import Catalog
from services.bus import flush_interest
from services.capabilities import (
    Capabilities,
    Hardware,
    Load,
    RunningModel,
    ServedModel,
    encode_capabilities,
)
from services.lifecycle import AsyncService
from services.needs import node_wire_features
from services.subjects import WORKER_QUEUE_GROUP, Subjects

log = logging.getLogger("inferbus.worker.registry")


def build_capabilities(
    *,
    node_id: str,
    version: str,
    seq: int,
    now_unix: float,
    ttl_s: float,
    backends: Sequence[Backend],
    catalog: Catalog,
    load: Mapping[str, SlotLoad],
    hardware: Hardware | None,
    instance: str | None = None,
) -> Capabilities:
    models = sorted(catalog.models.values(), key=lambda m: m.name)
    served = tuple(
        ServedModel(
            name=model.name,
            type=model.type,
            runtime=model.runtime.kind,
            size_gb=None
            if model.info.size_bytes is None
            else round(model.info.size_bytes / 1e9, 2),
            running=model.info.running,
            context_window=model.info.context_window,
            family=model.info.family,
            capabilities=model.info.capabilities,
            pricing=model.pricing,
            size_bytes=model.info.size_bytes,
            digest=model.info.digest,
            modified_at=model.info.modified_at,
            format=model.info.format,
            parameter_size=model.info.parameter_size,
            quantization_level=model.info.quantization_level,
        )
        for model in models
    )
    running = tuple(
        RunningModel(
            name=model.name,
            size_bytes=model.info.size_bytes,
            size_vram=model.info.size_vram,
            expires_at=model.info.expires_at,
            context_length=model.info.context_window,
        )
        for model in models
        if model.info.running
    )
    return Capabilities(
        node_id=node_id,
        version=version,
        seq=seq,
        ts=round(now_unix, 3),
        ttl_s=ttl_s,
        runtimes=tuple(backend.status() for backend in backends),
        served_models=served,
        load={kind: Load(inflight=s.inflight, capacity=s.capacity) for kind, s in load.items()},
        hardware=hardware,
        instance=instance,
        wire_features=node_wire_features(b.config.kind for b in backends if b.runtime is not None),
        running_models=running,
    )


class Announcer(AsyncService):
    """Publishes the record every heartbeat and on demand; answers caps and discover."""

    def __init__(
        self,
        nc: NatsClient,
        subjects: Subjects,
        node_id: str,
        *,
        heartbeat_s: float,
        refresh: Callable[[], Awaitable[None]],
        record: Callable[[int], Capabilities],
        caps_answered: Callable[[float], None] = lambda _elapsed_s: None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._node_id = node_id
        self._heartbeat_s = heartbeat_s
        self._refresh = refresh
        self._record = record
        self._caps_answered = caps_answered
        self._caps_subject = subjects.caps(node_id)
        self._seq = 0
        self._changed = asyncio.Event()
        self._subscriptions: list[Subscription] = []
        self._loop: asyncio.Task[None] | None = None
        self._withdrawn = False

    def changed(self) -> None:
        """Something worth telling the fleet at once happened."""
        self._changed.set()

    async def start(self) -> None:
        self._subscriptions = [
            await self._nc.subscribe(
                self._subjects.caps(self._node_id), queue=WORKER_QUEUE_GROUP, cb=self._answer
            ),
            await self._nc.subscribe(self._subjects.discover(), cb=self._answer),
        ]
        await flush_interest(self._nc)
        await self.publish()
        self._loop = asyncio.create_task(self._heartbeat_forever())

    async def publish(self) -> None:
        self._seq += 1
        try:
            await self._nc.publish(
                self._subjects.capabilities(self._node_id),
                encode_capabilities(self._current(self._seq)),
            )
        except Exception:
            log.exception("capabilities could not be published")

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        if msg.subject != self._caps_subject:
            # `ncs.discover`: routers take a record only from the node's own subject (the
            # reply inbox is anyone's to answer), so announce there before replying.
            await self.publish()
        started_s = time.monotonic()
        with contextlib.suppress(Exception):
            await msg.respond(encode_capabilities(self._current(self._seq)))
        if msg.subject == self._caps_subject:
            self._caps_answered(time.monotonic() - started_s)

    async def _heartbeat_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self._heartbeat_s
        # A storm of changes (slots filling and freeing) is one announcement per gap.
        min_gap_s = min(0.25, self._heartbeat_s / 4)
        while True:
            try:
                async with asyncio.timeout_at(next_beat):
                    await self._changed.wait()
            except TimeoutError:
                next_beat = loop.time() + self._heartbeat_s
                try:
                    await self._refresh()
                except Exception:
                    log.exception("runtime probe round failed")
            self._changed.clear()
            await self.publish()
            await asyncio.sleep(min_gap_s)

    def _current(self, seq: int) -> Capabilities:
        record = self._record(seq)
        return record.model_copy(update={"served_models": ()}) if self._withdrawn else record

    async def withdraw(self) -> None:
        """The node is leaving: no more heartbeats, and one last record serving nothing, so
        routers stop choosing it now rather than a ttl later. Caps and discovery are still
        answered (routers probe a node that holds their jobs) until `stop`."""
        await self._stop_heartbeats()
        self._withdrawn = True
        await self.publish()

    async def _stop_heartbeats(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None

    async def stop(self) -> None:
        await self._stop_heartbeats()
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions = []
