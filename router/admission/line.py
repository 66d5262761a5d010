"""The line a call waits in while no slot is free, and the tenants' limits at its door.

In front of the dispatcher (`Router.dispatch`), behind the idempotency gate. A call:

1. is checked against its tenant: the model allow-list, `rpm` and `tpm`
   (router/admission/limits.py); over a limit → 429 with `Retry-After`, the limit named;
2. finds its lane: the (model, type) selection picks for it on the fleet. Calls that
   selection sends elsewhere (the local runtime, static, a cloud) never wait here;
3. starts at once when its lane has a free slot that nobody waiting is owed and its tenant
   is under `max_concurrent`; otherwise waits in its lane (router/admission/lanes.py, in
   the order of router/admission/fair_queue.py) — or is turned away (429) when its tenant's
   `max_queued`, the router's `admission.max_queued`, or a `max_wait_ms` of 0 says so;
4. leaves the line when a slot frees for it — a worker's record (a slot announced free,
   a BUSY node heard from again), an answer of the router's own — at its deadline
   (DEADLINE_EXCEEDED), after `admission.max_wait_ms` (429), or when its client goes;
5. goes back to the head of its place in line when every node it was sent to answered
   BUSY (another router took the slot first), for as long as its budget lasts.

With `limits.shared`, rpm and tpm are counted across routers in JetStream KV
(router/admission/shared_limits.py) instead of in this router, and a tenant's running
calls too (router/admission/shared_running.py): a call let go is counted there before it
runs, and one the routers together have no room for goes back to the head of its place in
line, where it waits until another router's call of its tenant ends.

Free slots, and the holds of calls let go that have not taken theirs yet, are
router/admission/slots.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from router.admission.lanes import Lanes, QueueMetrics, Unmeasured, Waiter
from router.admission.limits import Refusal, TenantUsage, check_arrival, queue_refusal
from router.admission.shared_limits import SharedCounters
from router.admission.shared_running import SharedRunning
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
        self.metrics: QueueMetrics = metrics or Unmeasured()
        self.directory = directory
        self.settings = settings
        self._usage: dict[str, TenantUsage] = {}
        self.slots = slots
        self._lanes = Lanes(
            slots,
            settings,
            may_start=self._may_start,
            started=self._started,
            clock=clock,
            metrics=self.metrics,
        )
        slots.when_freed(self._lanes.pump)
        self.shared: SharedCounters | None = None
        self.running: SharedRunning | None = None

    def wake(self, *_news: object) -> None:
        """Capacity may have freed (a worker's record, a breaker's change): let calls go.
        O(1) when nobody waits."""
        if len(self._lanes):
            self._lanes.pump()

    def share(self, shared: SharedCounters, running: SharedRunning) -> None:
        """From now on, tenants' rpm, tpm and running calls are counted across routers
        (`limits.shared`)."""
        self.shared = shared
        self.running = running

    def configure(self, settings: AdmissionSettings, directory: TenantDirectory) -> None:
        """New classes, bounds and tenants (a reload); calls waiting keep their place."""
        self.settings = settings
        self.directory = directory
        self._lanes.reconfigure(settings, directory.tenants)

    @property
    def waiting(self) -> int:
        return len(self._lanes)

    def snapshot(self) -> list[dict[str, Any]]:
        """The waiting calls, oldest first (no content): for `GET /queue`."""
        return self._lanes.snapshot()

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
            shared = await self._take_shared(tenant, turn)
            if shared is None:
                again = True  # at max_concurrent across routers: back to its place in line
                continue
            # The lane's pick stands for the first attempt when nothing came between (no
            # wait in line, no count across routers).
            fresh = pick if totals.first_queued is None and not again and not shared else None
            response, route = await self._run(call, tenant, turn, totals, shared=shared, pick=fresh)
            left_s = call.left_s(self._clock())
            if not self._busy_everywhere(response) or lane is None or left_s <= 0:
                return response, self._route(route, call, totals)
            again = True  # back to the head of its place in line
            lane = self._lane_of(job, call.agent_id) or lane

    async def _take_shared(self, tenant: Tenant, hold: Hold) -> bool | None:
        """Count a call let go as running across routers, when its tenant has a shared
        `max_concurrent`: True (counted: given back when it ends), False (nothing to count),
        None (the routers together are at the limit: it does not start)."""
        running, limit = self.running, tenant.limits.max_concurrent
        if running is None or limit is None:
            return False
        # A call not for the fleet never waits for the limit here; it is counted all the same.
        try:
            taken = await running.take(tenant.name, limit if hold.lane is not None else None)
        except BaseException:
            self._give_back(tenant, hold)
            raise
        if not taken:
            self._give_back(tenant, hold)
            return None
        return True

    async def _run(
        self,
        call: Call,
        tenant: Tenant,
        hold: Hold,
        totals: _Totals,
        *,
        shared: bool,
        pick: Selection | None,
    ) -> Served:
        """One pass through the dispatcher; `shared`: its tenant's call is counted across
        routers, and given back there when it ends; `pick`: the lane's, still fresh."""
        queue_ms = round(totals.waited_s * 1000.0, 1)
        if call.on_queued is not None:
            call.on_queued(queue_ms)
        try:
            with self.slots.running(hold):
                response, route = await self._dispatch(replace(call, queue_ms=queue_ms, pick=pick))
        finally:
            self._usage_of(tenant).running -= 1
            if shared and self.running is not None:
                self.running.give_back(tenant.name)
            self._lanes.pump()
        totals.attempts.extend(route.attempts)
        self.slots.heard_busy(route, job_type_of(call.job))
        tokens = self._count_tokens(tenant, response)
        if self.shared is not None and tenant.limits.tpm is not None:
            self.shared.used(tenant.name, tokens)
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
        if not self._lanes.has_waiters(lane) and self._may_start(tenant) and self.slots.free(lane):
            usage.running += 1
            return self.slots.hold(lane)
        now = self._clock()
        if totals.first_queued is None:
            totals.first_queued = now
        refusal = None if again else self._queue_refusal(lane, tenant)
        if refusal is not None:
            return self._refused(job, refusal)
        granted = asyncio.get_running_loop().create_future()
        waiter = Waiter(tenant, priority, lane, now, granted)
        self._lanes.join(waiter, front=again)
        max_wait_at = totals.first_queued + self.settings.max_wait_ms / 1000.0
        ended = "cancelled"
        try:
            ended = await self._wait(waiter, min(deadline, max_wait_at), call)
        finally:
            waited_s = self._clock() - waiter.since
            totals.waited_s += waited_s
            self.metrics.waited(tenant.name, priority, waited_s)
            if not waiter.granted.done():
                self._lanes.leave(waiter)
            elif ended != "granted":  # let go in the same instant it stopped waiting
                self._give_back(tenant, Hold(lane, reserved=True))
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
                retry_after_ms=self._lanes.drain_retry_ms(lane),
            )
        return JobResponse.failure(job.job_id, error)

    async def _wait(self, waiter: Waiter, until: float, call: Call) -> str:
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

    def _give_back(self, tenant: Tenant, hold: Hold) -> None:
        """A call let go that will not run after all: its turn goes to the next."""
        self._usage_of(tenant).running -= 1
        self.slots.release(hold)
        self._lanes.pump()

    def _may_start(self, tenant: Tenant) -> bool:
        elsewhere = 0
        if self.running is not None and tenant.limits.max_concurrent is not None:
            elsewhere = self.running.elsewhere(tenant.name)
        return self._usage_of(tenant).may_start(tenant.limits, elsewhere)

    def _started(self, tenant: Tenant) -> None:
        self._usage_of(tenant).running += 1

    # --- answers -------------------------------------------------------------------------

    def _queue_refusal(self, lane: Lane, tenant: Tenant) -> Refusal | None:
        return queue_refusal(
            tenant,
            queued=self._lanes.queued(tenant.name),
            waiting=len(self._lanes),
            in_lane=self._lanes.in_lane(lane),
            max_queued=self.settings.max_queued,
            drains_per_s=self._lanes.drain_per_s(lane),
        )

    def _refused(self, job: JobRequest, refusal: Refusal) -> JobResponse:
        self.metrics.rejected(refusal.limit)
        return refusal.answer(job.job_id)

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
