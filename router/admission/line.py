"""The line a call waits in while no slot is free, and the tenants' limits at its door.

In front of the dispatcher (`Router.dispatch`), behind the idempotency gate. A call:

1. is checked against its tenant: the model allow-list, `rpm` and `tpm`
   (router/admission/limits.py); over a limit → 429 with `Retry-After`, the limit named;
2. finds its lane: the (model, type) selection picks for it on the fleet. Calls that
   selection sends elsewhere (the local runtime, static, a cloud) never wait here;
3. starts at once when its lane has a free slot that nobody waiting is owed and its tenant
   is under `max_concurrent`; otherwise waits in the lane's `FairQueue`
   (router/admission/fair_queue.py) — or is turned away (429) when its tenant's
   `max_queued`, the router's `admission.max_queued`, or a `max_wait_ms` of 0 says so;
4. leaves the line when a slot frees for it — a worker's record (a slot announced free,
   a BUSY node heard from again), an answer of the router's own — at its deadline
   (DEADLINE_EXCEEDED), after `admission.max_wait_ms` (429), or when its client goes;
5. goes back to the head of its place in line when every node it was sent to answered
   BUSY (another router took the slot first), for as long as its budget lasts.

With `limits.shared`, rpm and tpm are counted across routers in JetStream KV
(router/admission/shared_limits.py) instead of in this router.

Free slots are read from the fleet index (records' load moved by the router's own starts
and ends, nodes that answered BUSY counted full); slots granted to calls that have not
taken them yet are reserved, so one freed slot wakes one call. A call's reservation ends
when its job takes a slot on a node (the fleet view tells, in the call's own context).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from router.admission.fair_queue import FairQueue
from router.admission.limits import (
    DrainRate,
    Refusal,
    TenantUsage,
    check_arrival,
    queue_refusal,
    queue_retry_after_ms,
)
from router.admission.shared_limits import SharedCounters
from router.admission.slots import Hold, Lane, LaneSlots
from router.admission.tenants import Tenant, TenantDirectory
from router.attempts.route import Route
from router.config import AdmissionSettings
from router.selection.select import Selection
from router.serving.call import Call, Served
from router.serving.dispatch import job_type_of
from services.errors import ErrorCode, InferbusError
from services.wire import JobRequest, JobResponse

__all__ = ["Admission", "Dispatch", "Lane", "QueueMetrics"]

Dispatch = Callable[[Call], Awaitable[Served]]  # what the line stands in front of


class QueueMetrics(Protocol):
    """What the line tells the metrics (router/metrics.py implements it)."""

    def depth(self, tenant: str, priority: str, change: int) -> None: ...
    def waited(self, tenant: str, priority: str, seconds: float) -> None: ...
    def rejected(self, reason: str) -> None: ...
    def tokens(self, tenant: str, prompt: int, completion: int) -> None: ...


class _Unmeasured:
    def depth(self, tenant: str, priority: str, change: int) -> None:
        pass

    def waited(self, tenant: str, priority: str, seconds: float) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def tokens(self, tenant: str, prompt: int, completion: int) -> None:
        pass


@dataclass(eq=False)
class _Waiter:
    tenant: Tenant
    priority: str
    lane: Lane
    since: float
    granted: asyncio.Future[None]


@dataclass
class _Totals:
    attempts: list[Any] = field(default_factory=list)
    waited_s: float = 0.0
    first_queued: float | None = None


class Admission:
    """The line and the limits for one router (module doc)."""

    def __init__(
        self,
        dispatch: Dispatch,
        slots: LaneSlots,
        settings: AdmissionSettings,
        directory: TenantDirectory,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: QueueMetrics | None = None,
    ) -> None:
        """`dispatch` serves a call once it may go; `clock` is the calls' deadlines' one.
        Whoever hears of freed capacity calls `wake` (router/service.py wires the fleet's
        records and the health board's changes to it)."""
        self._dispatch = dispatch
        self._clock = clock
        self.metrics: QueueMetrics = metrics or _Unmeasured()
        self.directory = directory
        self.settings = settings
        self._lanes: dict[Lane, FairQueue[_Waiter]] = {}
        self._waiters: dict[_Waiter, None] = {}  # every waiting call, oldest first
        self._usage: dict[str, TenantUsage] = {}
        self._tenants: dict[str, Tenant] = {}  # the newest Tenant seen per name
        self.slots = slots
        slots.when_freed(self._pump)
        self.shared: SharedCounters | None = None
        self._drain: dict[Lane, DrainRate] = {}
        self._pumping = False

    def wake(self, *_news: object) -> None:
        """Capacity may have freed (a worker's record, a breaker's change): let calls go.
        O(1) when nobody waits."""
        if self._waiters:
            self._pump()

    def share(self, shared: SharedCounters) -> None:
        """From now on, tenants' rpm and tpm are counted across routers (`limits.shared`)."""
        self.shared = shared

    def configure(self, settings: AdmissionSettings, directory: TenantDirectory) -> None:
        """New classes, bounds and tenants (a reload); calls waiting keep their place."""
        self.settings = settings
        self.directory = directory
        for name in list(self._tenants):  # waiting calls go by their tenant's new limits
            self._tenants[name] = directory.tenants.get(name, self._tenants[name])
        for lane, queue in list(self._lanes.items()):
            rebuilt: FairQueue[_Waiter] = FairQueue(settings.classes, settings.lower_class_share)
            for waiter, priority, tenant in list(queue.waiting()):
                weight = self._tenants[tenant].weight
                rebuilt.push(waiter, tenant=tenant, priority=priority, weight=weight)
            self._lanes[lane] = rebuilt
        self._pump()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

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

    async def dispatch(self, call: Call) -> Served:
        """`Router.dispatch` behind the tenant's limits and the line (module doc)."""
        tenant = self._tenant_of(call)
        job = call.job
        now = self._clock()
        pick = self._pick(job, call.agent_id)
        lane = (pick.model, pick.type) if pick is not None else None
        if not tenant.may_use(job.model, lane[0] if lane else None):
            error = InferbusError(
                ErrorCode.MODEL_NOT_FOUND,
                f"{job.model or 'the default model'} is not among tenant {tenant.name!r}'s models",
            )
            return JobResponse.failure(job.job_id, error), self._route(Route(), call, _Totals())
        usage = self._usage_of(tenant)
        if self.shared is not None:  # counted across routers
            refusal = await self.shared.admit(tenant.name, tenant.limits)
        else:
            refusal = check_arrival(tenant.name, tenant.limits, usage, now)
        if refusal is not None:
            return self._refused(job, refusal), self._route(Route(), call, _Totals())
        usage.requests.add(now)
        totals = _Totals()
        again = False
        while True:
            turn = await self._turn(call, tenant, lane, totals, again=again)
            if isinstance(turn, JobResponse):
                return turn, self._route(Route(), call, totals)
            fresh = pick if totals.first_queued is None and not again else None
            response, route = await self._run(call, tenant, turn, totals, fresh)
            left_s = call.left_s(self._clock())
            if not self._busy_everywhere(response) or lane is None or left_s <= 0:
                return response, self._route(route, call, totals)
            again = True  # back to the head of its place in line
            lane = self._lane_of(job, call.agent_id) or lane

    async def _run(
        self, call: Call, tenant: Tenant, hold: Hold, totals: _Totals, pick: Selection | None
    ) -> Served:
        """One pass through the dispatcher (with the lane's pick when it is still fresh:
        the call did not wait)."""
        queue_ms = round(totals.waited_s * 1000.0, 1)
        if call.on_queued is not None:
            call.on_queued(queue_ms)
        try:
            with self.slots.running(hold):
                response, route = await self._dispatch(replace(call, queue_ms=queue_ms, pick=pick))
        finally:
            self._usage_of(tenant).running -= 1
            self._pump()
        totals.attempts.extend(route.attempts)
        self.slots.heard_busy(route, job_type_of(call.job))
        tokens = self._count_tokens(tenant, response)
        if self.shared is not None:
            await self.shared.used(tenant.name, tokens)
        return response, route

    # --- waiting -----------------------------------------------------------------------

    async def _turn(
        self, call: Call, tenant: Tenant, lane: Lane | None, totals: _Totals, *, again: bool
    ) -> Hold | JobResponse:
        """A hold to run now, after waiting if need be; or the answer that ends the call."""
        job, deadline, priority = call.job, call.deadline, self._priority_of(call, tenant)
        usage = self._usage_of(tenant)
        if lane is None:  # not for the fleet: nothing to wait for here
            usage.running += 1
            return Hold(None)
        if lane not in self._lanes and usage.may_start(tenant.limits) and self.slots.free(lane):
            usage.running += 1
            return self.slots.hold(lane)
        now = self._clock()
        if totals.first_queued is None:
            totals.first_queued = now
        refusal = None if again else self._queue_refusal(lane, tenant)
        if refusal is not None:
            return self._refused(job, refusal)
        granted = asyncio.get_running_loop().create_future()
        waiter = _Waiter(tenant, priority, lane, now, granted)
        self._enqueue(waiter, front=again)
        max_wait_at = totals.first_queued + self.settings.max_wait_ms / 1000.0
        ended = "cancelled"
        try:
            ended = await self._wait(waiter, min(deadline, max_wait_at), call)
        finally:
            waited_s = self._clock() - waiter.since
            totals.waited_s += waited_s
            self.metrics.waited(tenant.name, priority, waited_s)
            if not waiter.granted.done():
                self._leave(waiter)
            elif ended != "granted":  # let go in the same instant it stopped waiting
                self._give_back(waiter)
        if ended == "granted":
            return Hold(lane, reserved=True)
        if ended == "gone":
            error = InferbusError(ErrorCode.CANCELLED, "the client went away while it waited")
        elif self._clock() >= deadline:
            error = InferbusError(
                ErrorCode.DEADLINE_EXCEEDED,
                f"the budget ran out after {totals.waited_s * 1000.0:.0f} ms in line",
            )
        else:
            self.metrics.rejected("max_wait")
            error = InferbusError(
                ErrorCode.BUSY,
                f"no slot for {lane[0]} within admission.max_wait_ms "
                f"({self.settings.max_wait_ms} ms)",
                retry_after_ms=self._drain_retry_ms(lane, len(self._lanes.get(lane, ()))),
            )
        return JobResponse.failure(job.job_id, error)

    async def _wait(self, waiter: _Waiter, until: float, call: Call) -> str:
        """'granted', 'gone' (the client left) or 'timeout'."""
        gone = asyncio.ensure_future(call.gone()) if call.gone is not None else None
        tick_s = self.settings.keepalive_ms / 1000.0
        try:
            while not waiter.granted.done():
                left_s = until - self._clock()
                if left_s <= 0:
                    return "timeout"
                watched: set[asyncio.Future[Any]] = {waiter.granted}
                if gone is not None:
                    watched.add(gone)
                await asyncio.wait(
                    watched,
                    timeout=min(left_s, tick_s) if call.on_wait else left_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if waiter.granted.done():
                    break
                if gone is not None and gone.done():
                    return "gone"
                if call.on_wait is not None and self._clock() < until:
                    await call.on_wait()
            return "granted"
        finally:
            if gone is not None:
                gone.cancel()
                with contextlib.suppress(BaseException):
                    await gone

    def _enqueue(self, waiter: _Waiter, *, front: bool) -> None:
        queue = self._lanes.get(waiter.lane)
        if queue is None:
            settings = self.settings
            queue = self._lanes[waiter.lane] = FairQueue(
                settings.classes, settings.lower_class_share
            )
        tenant = waiter.tenant
        self._tenants[tenant.name] = tenant
        push = queue.push_front if front else queue.push
        push(waiter, tenant=tenant.name, priority=waiter.priority, weight=tenant.weight)
        self._waiters[waiter] = None
        self._usage_of(tenant).queued += 1
        self.metrics.depth(tenant.name, waiter.priority, +1)
        self._pump()

    def _left_line(self, waiter: _Waiter) -> None:
        self._waiters.pop(waiter, None)
        self._usage_of(waiter.tenant).queued -= 1
        self.metrics.depth(waiter.tenant.name, waiter.priority, -1)
        queue = self._lanes.get(waiter.lane)
        if queue is not None and not len(queue):
            del self._lanes[waiter.lane]

    def _leave(self, waiter: _Waiter) -> None:
        """A call that stops waiting without its turn (deadline, client gone, cancelled)."""
        queue = self._lanes.get(waiter.lane)
        if queue is not None and queue.remove(waiter):
            self._left_line(waiter)

    def _give_back(self, waiter: _Waiter) -> None:
        """A call let go that will not run after all: its turn goes to the next."""
        self._usage_of(waiter.tenant).running -= 1
        self.slots.release(Hold(waiter.lane, reserved=True))
        self._pump()

    # --- letting calls go ----------------------------------------------------------------

    def _pump(self) -> None:
        """Let waiting calls go while their lanes have free slots (re-entrant safe;
        O(1) when nobody waits)."""
        if not self._waiters or self._pumping:
            return
        self._pumping = True
        try:
            for lane, queue in list(self._lanes.items()):
                while len(queue) and self.slots.free(lane):
                    waiter = queue.pop(self._may_start)
                    if waiter is None:
                        break
                    self._let_go(waiter)
        finally:
            self._pumping = False

    def _let_go(self, waiter: _Waiter) -> None:
        self._left_line(waiter)
        self._usage_of(waiter.tenant).running += 1
        self.slots.hold(waiter.lane)
        self._drain.setdefault(waiter.lane, DrainRate()).started(self._clock())
        waiter.granted.set_result(None)

    def _may_start(self, tenant_name: str) -> bool:
        tenant = self._tenants[tenant_name]
        return self._usage_of(tenant).may_start(tenant.limits)

    # --- answers -------------------------------------------------------------------------

    def _queue_refusal(self, lane: Lane, tenant: Tenant) -> Refusal | None:
        rate = self._drain.get(lane)
        return queue_refusal(
            tenant,
            queued=self._usage_of(tenant).queued,
            waiting=len(self._waiters),
            in_lane=len(self._lanes.get(lane, ())),
            max_queued=self.settings.max_queued,
            drains_per_s=rate.per_s(self._clock()) if rate is not None else None,
        )

    def _refused(self, job: JobRequest, refusal: Refusal) -> JobResponse:
        self.metrics.rejected(refusal.limit)
        return refusal.answer(job.job_id)

    def _drain_retry_ms(self, lane: Lane, waiting: int) -> int:
        rate = self._drain.get(lane)
        per_s = rate.per_s(self._clock()) if rate is not None else None
        return queue_retry_after_ms(waiting, per_s, unknown_ms=1000)

    def _route(self, route: Route, call: Call, totals: _Totals) -> Route:
        update: dict[str, Any] = {
            "queue_ms": round(totals.waited_s * 1000.0, 1),
            "priority": self._priority_of(call, self._tenant_of(call)),
            "priority_note": call.priority_note,
        }
        if totals.attempts:
            update["attempts"] = totals.attempts
        return route.model_copy(update=update)

    @staticmethod
    def _busy_everywhere(response: JobResponse) -> bool:
        return response.error is not None and response.error.code == ErrorCode.BUSY

    def _count_tokens(self, tenant: Tenant, response: JobResponse) -> int:
        usage = response.result.usage if response.result is not None else None
        if usage is None:
            return 0
        prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
        self._usage_of(tenant).tokens.add(self._clock(), prompt + completion)
        self.metrics.tokens(tenant.name, prompt, completion)
        return prompt + completion

    # --- small things ------------------------------------------------------------------

    def _lane_of(self, job: JobRequest, agent_id: str | None) -> Lane | None:
        pick = self._pick(job, agent_id)
        return (pick.model, pick.type) if pick is not None else None

    def _pick(self, job: JobRequest, agent_id: str | None) -> Selection | None:
        if not self.settings.max_wait_ms:
            return None  # with max_wait_ms 0 nothing waits: BUSY nodes answer 429
        return self.slots.pick(job, agent_id)

    def _usage_of(self, tenant: Tenant) -> TenantUsage:
        usage = self._usage.get(tenant.name)
        if usage is None:
            usage = self._usage[tenant.name] = TenantUsage()
        return usage

    def _tenant_of(self, call: Call) -> Tenant:
        """The call's tenant as configured now (a tenant removed by a reload while its
        call waited keeps its name, the default class and no limits)."""
        tenant = self.directory.tenants.get(call.tenant_name)
        return tenant or Tenant(call.tenant_name, self.settings.fallback_class)

    def _priority_of(self, call: Call, tenant: Tenant) -> str:
        return call.priority or tenant.priority or self.settings.fallback_class
