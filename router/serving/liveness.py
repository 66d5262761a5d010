"""Liveness while waiting: is a node that holds our jobs still there?

NATS cannot tell a requester that the responder died: a SIGKILLed worker's job simply
never gets an answer, and a SIGSTOPped one keeps its connection (and subscriptions) for
minutes. So while a node holds at least one of this router's jobs, whole or streamed, one
probe task per node asks `node.<id>.caps` every `interval_s`, on a node-scoped inbox like
every reply the router takes (`NodeLink.probe`):

- no responders → the node is gone (a dead process's subscriptions vanish with its
  connection; the server answers "no responders" at once) — reported immediately;
- `misses` probes in a row without an answer within `timeout_s` → the node is hung;
- while the router's own connection is down the probe says nothing (the bus's fault).

One task per node holding jobs, not per job: the cost follows the busy nodes, never the
requests or the fleet. Chosen over per-job keepalives from the worker: no change to the
wire contract or the worker, and one small request per busy node per interval instead
of one message per job per interval (measured in ops/offload_routing.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from router.serving.node_link import NodeLink

log = logging.getLogger("inferbus.router.liveness")

NodeLost = Callable[[str, str], None]  # (node, why)


@dataclass(frozen=True)
class LivenessSettings:
    interval_s: float = 0.2
    timeout_s: float = 0.6
    misses: int = 3


class Liveness:
    """Probe tasks for the nodes that hold jobs; `on_lost(node, why)` when one is gone."""

    def __init__(
        self, link: NodeLink, on_lost: NodeLost, settings: LivenessSettings | None = None
    ) -> None:
        self._link = link
        self._on_lost = on_lost
        self.settings = settings or LivenessSettings()
        self._holders: dict[str, int] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}

    def hold(self, node: str) -> None:
        """A job of ours went to `node`: probe it until the last one is released."""
        self._holders[node] = self._holders.get(node, 0) + 1
        if node not in self._probes:
            self._probes[node] = asyncio.create_task(self._probe(node))

    def release(self, node: str) -> None:
        """One job fewer; the probe ends itself at its next tick if none is left (so a
        node that takes one job after another keeps one task, not one per job)."""
        left = self._holders.get(node, 0) - 1
        if left > 0:
            self._holders[node] = left
        else:
            self._holders.pop(node, None)

    async def _probe(self, node: str) -> None:
        settings = self.settings
        missed = 0
        while True:
            await asyncio.sleep(settings.interval_s)
            if node not in self._holders:
                self._probes.pop(node, None)
                return
            heard = await self._link.probe(node, settings.timeout_s)
            if heard == "gone":
                self._lost(node, f"node {node} is gone (no responders on its caps subject)")
            elif heard == "silent":
                missed += 1
                if missed >= settings.misses:
                    missed = 0
                    self._lost(
                        node,
                        f"node {node} did not answer {settings.misses} liveness probes "
                        f"of {settings.timeout_s * 1000:.0f} ms",
                    )
            else:  # alive, or the router's own connection is down: nothing against the node
                missed = 0

    def _lost(self, node: str, why: str) -> None:
        log.warning("%s; moving its jobs on", why)
        self._on_lost(node, why)

    async def stop(self) -> None:
        probes = list(self._probes.values())
        self._probes.clear()
        self._holders.clear()
        for probe in probes:
            probe.cancel()
        for probe in probes:
            with contextlib.suppress(asyncio.CancelledError):
                await probe
