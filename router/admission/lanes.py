"""The calls waiting for a slot: one fair queue per lane, and letting them go as slots free.

A call that cannot start joins its lane (the (model, type) it needs a slot of) and waits
on a future; `pump` grants waiting calls their turn, in each lane's `FairQueue` order
(router/admission/fair_queue.py), while the lane has a free slot and the call's tenant
may start one more call (`may_start`, from the tenant's limits). A granted call holds a
slot of its lane (`LaneSlots.hold`) from that instant, so one freed slot lets one call go.

How fast each lane lets calls go is kept too: a call turned away from a full queue is told
to come back after the time its lane takes to drain.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from router.admission.fair_queue import FairQueue
from router.admission.limits import DrainRate, queue_retry_after_ms
from router.admission.slots import Lane, LaneSlots
from router.admission.tenants import Tenant
from router.config import AdmissionSettings

__all__ = ["Lanes", "QueueMetrics", "Waiter"]


class QueueMetrics(Protocol):
    """What the line tells the metrics (router/metrics.py implements it)."""

    def depth(self, tenant: str, priority: str, change: int) -> None: ...
    def waited(self, tenant: str, priority: str, seconds: float) -> None: ...
    def rejected(self, reason: str) -> None: ...
    def tokens(self, tenant: str, prompt: int, completion: int) -> None: ...


class Unmeasured:
    """Metrics nobody reads (a line built without them)."""

    def depth(self, tenant: str, priority: str, change: int) -> None:
        pass

    def waited(self, tenant: str, priority: str, seconds: float) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def tokens(self, tenant: str, prompt: int, completion: int) -> None:
        pass


@dataclass(eq=False)
class Waiter:
    """One waiting call: its future is set when its turn comes."""

    tenant: Tenant
    priority: str
    lane: Lane
    since: float
    granted: asyncio.Future[None]


class Lanes:
    """Every lane's waiting calls, for one router (module doc)."""

    def __init__(
        self,
        slots: LaneSlots,
        settings: AdmissionSettings,
        *,
        may_start: Callable[[Tenant], bool],
        started: Callable[[Tenant], None],
        clock: Callable[[], float],
        metrics: QueueMetrics,
    ) -> None:
        """`may_start` says whether a tenant's limits let one more of its calls start;
        `started` hears that one of its calls was let go."""
        self._slots = slots
        self._settings = settings
        self._may_start = may_start
        self._started = started
        self._clock = clock
        self.metrics = metrics
        self._lanes: dict[Lane, FairQueue[Waiter]] = {}
        self._waiters: dict[Waiter, None] = {}  # every waiting call, oldest first
        self._queued: Counter[str] = Counter()  # waiting calls per tenant
        self._tenants: dict[str, Tenant] = {}  # the newest Tenant seen per name
        self._drain: dict[Lane, DrainRate] = {}
        self._pumping = False

    def __len__(self) -> int:
        return len(self._waiters)

    def has_waiters(self, lane: Lane) -> bool:
        return lane in self._lanes

    def in_lane(self, lane: Lane) -> int:
        return len(self._lanes.get(lane, ()))

    def queued(self, tenant: str) -> int:
        """How many calls of the tenant wait now."""
        return self._queued[tenant]

    def drain_per_s(self, lane: Lane) -> float | None:
        """Calls the lane let go per second lately (None: too few yet)."""
        rate = self._drain.get(lane)
        return rate.per_s(self._clock()) if rate is not None else None

    def drain_retry_ms(self, lane: Lane) -> int:
        """When a call that gave up waiting in `lane` may come back."""
        return queue_retry_after_ms(self.in_lane(lane), self.drain_per_s(lane), unknown_ms=1000)

    def reconfigure(self, settings: AdmissionSettings, tenants: dict[str, Tenant]) -> None:
        """New classes and tenants (a reload): waiting calls keep their place and go by
        their tenant's new weight and limits."""
        self._settings = settings
        for name in list(self._tenants):
            self._tenants[name] = tenants.get(name, self._tenants[name])
        for lane, queue in list(self._lanes.items()):
            rebuilt: FairQueue[Waiter] = FairQueue(settings.classes, settings.lower_class_share)
            for waiter, priority, tenant in list(queue.waiting()):
                weight = self._tenants[tenant].weight
                rebuilt.push(waiter, tenant=tenant, priority=priority, weight=weight)
            self._lanes[lane] = rebuilt
        self.pump()

    def snapshot(self) -> list[dict[str, Any]]:
        """The waiting calls, oldest first (no content): for `GET /queue`."""
        now = self._clock()
        return [
            {
                "tenant": waiter.tenant.name,
                "class": waiter.priority,
                "model": waiter.lane[0],
                "type": waiter.lane[1],
                "age_ms": round((now - waiter.since) * 1000.0, 1),
            }
            for waiter in self._waiters
        ]

    def join(self, waiter: Waiter, *, front: bool) -> None:
        """Wait in the waiter's lane: at the head of its tenant's line when `front` (a
        call that every node answered BUSY), else at the back."""
        queue = self._lanes.get(waiter.lane)
        if queue is None:
            settings = self._settings
            queue = self._lanes[waiter.lane] = FairQueue(
                settings.classes, settings.lower_class_share
            )
        tenant = waiter.tenant
        self._tenants[tenant.name] = tenant
        push = queue.push_front if front else queue.push
        push(waiter, tenant=tenant.name, priority=waiter.priority, weight=tenant.weight)
        self._waiters[waiter] = None
        self._queued[tenant.name] += 1
        self.metrics.depth(tenant.name, waiter.priority, +1)
        self.pump()

    def leave(self, waiter: Waiter) -> None:
        """A call that stops waiting without its turn (deadline, client gone, cancelled)."""
        queue = self._lanes.get(waiter.lane)
        if queue is not None and queue.remove(waiter):
            self._left(waiter)

    def pump(self) -> None:
        """Let waiting calls go while their lanes have free slots (re-entrant safe;
        O(1) when nobody waits)."""
        if not self._waiters or self._pumping:
            return
        self._pumping = True
        try:
            for lane, queue in list(self._lanes.items()):
                while len(queue) and self._slots.free(lane):
                    waiter = queue.pop(self._tenant_may_start)
                    if waiter is None:
                        break
                    self._let_go(waiter)
        finally:
            self._pumping = False

    def _let_go(self, waiter: Waiter) -> None:
        self._left(waiter)
        self._started(waiter.tenant)
        self._slots.hold(waiter.lane)
        self._drain.setdefault(waiter.lane, DrainRate()).started(self._clock())
        waiter.granted.set_result(None)

    def _left(self, waiter: Waiter) -> None:
        self._waiters.pop(waiter, None)
        name = waiter.tenant.name
        self._queued[name] -= 1
        if self._queued[name] <= 0:
            del self._queued[name]
        self.metrics.depth(name, waiter.priority, -1)
        queue = self._lanes.get(waiter.lane)
        if queue is not None and not len(queue):
            del self._lanes[waiter.lane]

    def _tenant_may_start(self, tenant_name: str) -> bool:
        return self._may_start(self._tenants[tenant_name])
