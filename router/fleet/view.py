"""The router's live view of the fleet (NCS): records in, the fleet index kept current.

Fed by `ncs.capabilities.<id>` heartbeats. At start, one `ncs.discover` scatter-gather
makes every worker announce itself at once; the view is complete when `start` returns.

Trust (DESIGN §7): the subject is the identity. A record is taken only when its
body's `node_id` equals the subject's last token — the token that per-node permissions pin
(`ops/nats/accounts.conf`). Discovery *replies* come back on the router's inbox, which any
worker may answer, so their bodies are never taken: a worker answers `ncs.discover` by
publishing its record on its own `ncs.capabilities.<id>` first, and the router only waits
(bounded) for those records of the nodes that replied. Freshness is the router's receive
clock; the sender's `ts` is display only. Records over `max_record_bytes`, with more than
`max_models_per_node` models, or from new nodes beyond `max_nodes` are refused; each refusal
is logged once per (reason, node), up to a bound.

Responsiveness: nats-py runs one subscription's callback for each queued message without
giving the loop back, so a backlog of records (a restart of 3,000 workers, 1 s heartbeats)
would starve HTTP. Intake yields every `_YIELD_EVERY` records; staleness and forgetting run
on a timer (`sweep_s`), not per record; a heartbeat whose substance did not change is not
re-validated (`router/fleet/records.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ConfigDict, Field

from router.fleet.index import FleetIndex, NodeEntry, Taken
from router.fleet.records import RecordDecoder, Refused
from services.bus import flush_interest, relayed_by_jetstream
from services.capabilities import Capabilities
from services.fleet_scan import collect_fleet
from services.lifecycle import AsyncService
from services.subjects import Subjects
from services.wire import slot_kind

__all__ = ["FleetSettings", "FleetView"]

log = logging.getLogger("inferbus.router.fleet")

_YIELD_EVERY = 64  # records taken between two yields to the event loop
_LOGGED_REFUSALS = 1024  # distinct (reason, node) refusals logged before going quiet


class FleetSettings(BaseModel):
    """`fleet:` in the router's config: bounds on what the fleet may make the router hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_nodes: int = Field(default=10_000, gt=0)
    max_models_per_node: int = Field(default=512, gt=0)
    max_record_bytes: int = Field(default=256 * 1024, ge=1024)
    drop_after_ttls: float = Field(default=10, ge=1)  # a stale node is forgotten after this
    sweep_s: float = Field(default=0.5, gt=0)  # how often staleness is applied to the index
    discover_wait_s: float = Field(default=1.0, gt=0)


class _RefusalLog:
    """Logs the first refusal of each (reason, node) and nothing more (bounded memory)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()
        self.refused = 0

    def refuse(self, reason: str, node: str, detail: str) -> None:
        self.refused += 1
        key = (reason, node)
        if key in self._seen or len(self._seen) > _LOGGED_REFUSALS:
            return
        self._seen.add(key)
        if len(self._seen) > _LOGGED_REFUSALS:
            log.warning("more than %d refused record sources; no longer logged", _LOGGED_REFUSALS)
            return
        log.warning("record refused (%s) for node %r: %s", reason, node, detail)


class FleetView(AsyncService):
    def __init__(
        self,
        nc: NatsClient,
        subjects: Subjects,
        *,
        clock: Callable[[], float],
        local_node: str | None = None,
        settings: FleetSettings | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self.clock = clock
        self.local_node = local_node
        self.settings = settings or FleetSettings()
        self.index = FleetIndex(
            local_node=local_node,
            drop_after_ttls=self.settings.drop_after_ttls,
            max_nodes=self.settings.max_nodes,
            max_models_per_node=self.settings.max_models_per_node,
        )
        self._listeners: list[Callable[[Capabilities], None]] = []
        self._job_listeners: list[Callable[[str, str, bool], None]] = []
        self._subject_head = subjects.capabilities("")  # "<prefix.>ncs.capabilities."
        self.refusals = _RefusalLog()
        self._decoder = RecordDecoder()
        self.index.on_forget(self._decoder.forget)
        self._taken_since_yield = 0
        self._subscription: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def nodes(self) -> dict[str, NodeEntry]:
        return self.index.nodes

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(
            self._subjects.all_capabilities(), cb=self._on_record
        )
        await flush_interest(self._nc)
        await self.discover()
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def discover(self) -> None:
        """Ask every node to announce itself; return when they have (or after a bound)."""
        replied = {r.node_id for r in await collect_fleet(self._nc, self._subjects)}
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.settings.discover_wait_s
        while any(node not in self.index.nodes for node in replied):
            if loop.time() >= give_up_at:
                break
            await asyncio.sleep(0.02)

    async def _on_record(self, msg: Msg) -> None:
        if relayed_by_jetstream(msg.headers):
            node = msg.subject.removeprefix(self._subject_head)
            self.refusals.refuse("relayed by JetStream", node, f"{msg.headers}")
            return
        self.take_message(msg.subject, msg.data)
        self._taken_since_yield += 1
        if self._taken_since_yield >= _YIELD_EVERY:
            self._taken_since_yield = 0
            await asyncio.sleep(0)

    def take_message(self, subject: str, data: bytes) -> Taken | None:
        """One message from `ncs.capabilities.<id>`: checked, then indexed (None: refused)."""
        node = subject.removeprefix(self._subject_head)
        if len(data) > self.settings.max_record_bytes:
            self.refusals.refuse("too large", node, f"{len(data)} bytes")
            return None
        decoded = self._decoder.decode(node, data)
        if isinstance(decoded, Refused):
            self.refusals.refuse(decoded.reason, node, decoded.detail)
            return None
        record = decoded.record
        taken = self.index.take(record, self.clock())
        if taken.refused:
            self.refusals.refuse(taken.value, node, f"{len(record.served_models)} models")
            return None
        self._decoder.keep(node, decoded)
        if taken is not Taken.OUT_OF_ORDER:
            for listener in self._listeners:
                listener(record)
        return taken

    def on_record(self, listener: Callable[[Capabilities], None]) -> None:
        """Call `listener` with every record the view takes."""
        self._listeners.append(listener)

    def on_forget(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node)` when a silent node is forgotten."""
        self.index.on_forget(listener)

    def sweep(self) -> None:
        for node in self.index.sweep(self.clock()):
            log.info(
                "node %s forgotten: no record for %.0f ttls", node, self.settings.drop_after_ttls
            )

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            self.sweep()

    @contextlib.contextmanager
    def job_on(self, node_id: str, model_type: str) -> Iterator[None]:
        """Count a job the router has in flight on a node while the block runs."""
        kind = slot_kind(model_type)
        self.index.job_started(node_id, kind)
        for listener in self._job_listeners:
            listener(node_id, kind, True)
        try:
            yield
        finally:
            self.index.job_ended(node_id, kind)
            for listener in self._job_listeners:
                listener(node_id, kind, False)

    def on_job(self, listener: Callable[[str, str, bool], None]) -> None:
        """Call `listener(node, kind, started)` when a job of the router's own takes a
        slot (started) and when it gives it back."""
        self._job_listeners.append(listener)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
