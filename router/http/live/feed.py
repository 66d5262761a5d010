"""The live page's feed: one snapshot per viewer, then only what changed, as server-sent events.

Nothing here walks the fleet per tick. The fleet view tells the feed which node it heard
from (`on_record`), which went stale (`on_stale`) and which it forgot (`on_forget`); an
answered request names the nodes it tried (their breakers may have moved). Those nodes
are marked dirty; every `flush_s` the feed rebuilds the rows of the dirty nodes only,
keeps those that differ from what viewers already have, and sends one `delta` event to
every viewer: changed rows, forgotten ids, when each heard node was heard, the requests
answered since (the newest hundred; more are only counted, so a busy router's stream
stays bounded), and the providers' state when it changed. With no viewer, flushing costs
nothing but clearing the sets.

A viewer is a bounded queue of encoded events. One that falls behind (a stalled browser,
a slow link) is cut off rather than buffered without end: its stream ends, and the
browser's EventSource reconnects and starts again from a fresh snapshot.

Event shapes (JSON in `data:`):

    snapshot  {"nodes": [row...], "heard": {id: unix_s}, "requests": [row...],
               "providers": [...], "queue": {...} | null, "local_node": id | null,
               "now": unix_s}
    delta     {"nodes": [row...], "gone": [id...], "heard": {id: unix_s},
               "requests": [row...], "requests_unsent"?: n, "providers"?: [...],
               "queue"?: {...}, "now": unix_s}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from router.attempts.route import Route
from router.fleet.view import FleetView
from router.http.live.rows import RequestFacts, heard_at, node_row, request_row
from services.capabilities import Capabilities
from services.lifecycle import AsyncService
from services.wire import SLOT_KINDS, JobResponse

__all__ = ["LiveFeed", "Viewer"]

Breakers = Callable[[str, float], dict[str, str]]  # (node, now) -> slot kind -> status
Document = Callable[[], Any]

_KEEPALIVE_S = 15.0
_VIEWER_BACKLOG = 64  # events a viewer may be behind before it is cut off
_PROVIDERS_EVERY = 4  # flushes between two looks at the providers' state
_REQUESTS_PER_FLUSH = 100  # the newest requests sent per flush; the rest only counted


def event(name: str, body: object) -> bytes:
    """One server-sent event: `event: <name>` and the body as compact JSON."""
    data = json.dumps(body, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


class Viewer:
    """One open stream: the events for it, in order; cut off when it falls behind."""

    def __init__(self, backlog: int = _VIEWER_BACKLOG) -> None:
        self._events: asyncio.Queue[bytes | None] = asyncio.Queue(backlog)
        self.cut_off = False

    def offer(self, data: bytes) -> None:
        if self.cut_off:
            return
        try:
            self._events.put_nowait(data)
        except asyncio.QueueFull:
            self.cut_off = True
            self._events.get_nowait()  # room for the end marker
            self._events.put_nowait(None)

    def close(self) -> None:
        """End the stream after what is queued."""
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)

    async def events(self, keepalive_s: float = _KEEPALIVE_S) -> AsyncIterator[bytes]:
        """The events, with an SSE comment when nothing was sent for `keepalive_s`."""
        while True:
            try:
                async with asyncio.timeout(keepalive_s):
                    data = await self._events.get()
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if data is None:
                return
            yield data


class LiveFeed(AsyncService):
    def __init__(
        self,
        fleet: FleetView,
        *,
        breakers: Breakers,
        providers: Document,
        queue: Document | None = None,
        flush_s: float = 0.5,
        recent: int = 200,
        unix_clock: Callable[[], float] = time.time,
    ) -> None:
        self._fleet = fleet
        self._breakers = breakers
        self._providers = providers
        self._queue = queue
        self.flush_s = flush_s
        self._unix = unix_clock
        self._viewers: set[Viewer] = set()
        self._dirty: set[str] = set()
        self._heard: set[str] = set()
        self._gone: set[str] = set()
        self._sent: dict[str, dict[str, Any]] = {}  # node -> the row viewers have
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self._new_requests: list[dict[str, Any]] = []
        self._providers_sent: Any = None
        self._queue_sent: Any = None
        self._flushes = 0
        self._providers_due = False  # a key or model changed since the last flush
        self._flusher: asyncio.Task[None] | None = None
        fleet.on_record(self._on_record)
        fleet.on_forget(self._on_forget)
        fleet.index.on_stale(self._on_stale)

    # --- what happened -------------------------------------------------------------------

    def _on_record(self, record: Capabilities) -> None:
        if self._viewers:
            self._dirty.add(record.node_id)
            self._heard.add(record.node_id)

    def _on_stale(self, node: str) -> None:
        if self._viewers:
            self._dirty.add(node)

    def _on_forget(self, node: str) -> None:
        self._dirty.discard(node)
        self._heard.discard(node)
        if self._sent.pop(node, None) is not None:
            self._gone.add(node)

    def health_changed(self, kind: str, owner: str) -> None:
        """The health board wrote a change: a node's breaker (`owner` the node), or a cloud
        key's or model's state (`owner` the provider), sent at the next flush."""
        if not self._viewers:
            return
        if kind == "breaker":
            self._dirty.add(owner)
        else:
            self._providers_due = True

    def answered(self, facts: RequestFacts, response: JobResponse | None, route: Route) -> None:
        """One request was answered: it joins the recent list; its nodes may have changed."""
        row = request_row(facts, response, route)
        self._recent.append(row)
        if not self._viewers:
            return
        self._new_requests.append(row)
        for attempt in route.attempts:
            if attempt.node is not None and attempt.via == "remote":
                self._dirty.add(attempt.node)

    # --- viewers --------------------------------------------------------------------------

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def watch(self) -> Viewer:
        """A new viewer, its first event the snapshot (O(fleet), once per viewer).

        Viewers already watching get what changed first, so that the rows they hold and
        the rows the feed compares with stay the same ones."""
        if self._viewers:
            self.flush()
        viewer = Viewer()
        viewer.offer(event("snapshot", self.snapshot()))
        self._viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self._viewers.discard(viewer)
        if not self._viewers:
            self._clear()

    def snapshot(self) -> dict[str, Any]:
        fleet = self._fleet
        now, now_unix = fleet.clock(), self._unix()
        rows = []
        heard: dict[str, float] = {}
        first = not self._viewers
        for node in fleet.index.node_ids:
            row = self._row(node, now)
            if row is None:
                continue
            if first:
                self._sent[node] = row
            elif row != self._sent.get(node):  # moved by time alone: everyone gets it next
                self._dirty.add(node)
            rows.append(row)
            heard[node] = heard_at(fleet.index.nodes[node], now=now, now_unix=now_unix)
        self._providers_sent = self._providers()
        self._queue_sent = self._queue() if self._queue is not None else None
        return {
            "nodes": rows,
            "heard": heard,
            "requests": list(self._recent),
            "providers": self._providers_sent,
            "queue": self._queue_sent,
            "local_node": fleet.local_node,
            "now": round(now_unix, 3),
        }

    def _row(self, node: str, now: float) -> dict[str, Any] | None:
        index = self._fleet.index
        entry = index.nodes.get(node)
        if entry is None:
            return None
        own: dict[str, int] = {
            kind: n for kind in SLOT_KINDS if (n := index.router_inflight.get((node, kind)))
        }
        return node_row(
            entry,
            now=now,
            local=node == index.local_node,
            router_inflight=own,
            breakers=self._breakers(node, now),
        )

    # --- flushing -------------------------------------------------------------------------

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            self.flush()

    def flush(self) -> None:
        """Send every viewer what changed since the last flush (nothing: no event)."""
        if not self._viewers:
            self._clear()
            return
        delta = self.delta()
        if delta is not None:
            data = event("delta", delta)
            for viewer in list(self._viewers):
                viewer.offer(data)
                if viewer.cut_off:
                    self._viewers.discard(viewer)

    def delta(self) -> dict[str, Any] | None:
        fleet = self._fleet
        now, now_unix = fleet.clock(), self._unix()
        changed = []
        for node in sorted(self._dirty):
            row = self._row(node, now)
            if row is not None and row != self._sent.get(node):
                self._sent[node] = row
                changed.append(row)
        heard = {
            node: heard_at(entry, now=now, now_unix=now_unix)
            for node in self._heard
            if (entry := fleet.index.nodes.get(node)) is not None
        }
        requests = self._new_requests
        body: dict[str, Any] = {
            "nodes": changed,
            "gone": sorted(self._gone),
            "heard": heard,
            "requests": requests[-_REQUESTS_PER_FLUSH:],
        }
        if len(requests) > _REQUESTS_PER_FLUSH:
            body["requests_unsent"] = len(requests) - _REQUESTS_PER_FLUSH
        self._flushes += 1
        if self._providers_due or self._flushes % _PROVIDERS_EVERY == 0:
            self._providers_due = False  # a change now; cooldowns count down: now and then
            providers = self._providers()
            if providers != self._providers_sent:
                self._providers_sent = body["providers"] = providers
        if self._queue is not None:
            queue = self._queue()
            if queue != self._queue_sent:
                self._queue_sent = body["queue"] = queue
        self._dirty, self._heard, self._gone, self._new_requests = set(), set(), set(), []
        if not any(body.values()):
            return None
        body["now"] = round(now_unix, 3)
        return body

    def _clear(self) -> None:
        self._dirty.clear()
        self._heard.clear()
        self._gone.clear()
        self._new_requests.clear()
        self._sent.clear()

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        for viewer in list(self._viewers):
            viewer.close()
        self._viewers.clear()
