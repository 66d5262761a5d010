"""A fleet node as a target: the job over NATS to one node, its breaker kept.

`NodeCalls` is what every node attempt shares, built once where the router is wired
(router/service.py): the NATS edge (router/serving/node_link.py), the liveness probes, the
fleet's count of the router's jobs in flight, the breakers, the cap on concurrent remote
attempts and the waits from `offload`. `NodeTarget` is one pick of selection.

An attempt's outcome is judged by the one decision (router/attempts/decision.py): what it
says about the node goes to the node's breaker (a cancelled attempt is neutral, so a
half-open trial ends), and the dispatcher reads the same verdict's action.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from router.attempts.board import BreakerBoard
from router.attempts.decision import Outcome, next_action
from router.attempts.route import Attempt
from router.attempts.targets import Asked
from router.config import OffloadSettings
from router.fleet.view import FleetView
from router.serving.liveness import Liveness
from router.serving.node_link import NodeLink
from router.serving.replies import Waits
from services.errors import ErrorCode, InferbusError
from services.wire import JobResponse, JobType

__all__ = ["NodeCalls", "NodeTarget"]


@dataclass(frozen=True, slots=True)
class NodeTarget:
    node: str
    model: str
    job_type: JobType
    slot_type: str  # the served model's type: which of the node's slots the job takes
    calls: NodeCalls

    @property
    def label(self) -> str:
        return self.node

    @property
    def reason(self) -> str:
        return ""

    async def attempt(self, asked: Asked) -> Outcome:
        return await self.calls.attempt(self, asked)


class NodeCalls:
    """Everything node attempts share (module docstring)."""

    def __init__(
        self,
        link: NodeLink,
        liveness: Liveness,
        fleet: FleetView,
        breakers: BreakerBoard,
        offload: OffloadSettings,
        *,
        connected: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._liveness = liveness
        self._fleet = fleet
        self._breakers = breakers
        self._clock = clock
        self._connected = connected
        self._slots = asyncio.Semaphore(offload.remote_concurrency)
        self._cap_s = offload.attempt_timeout_ms / 1000.0
        self._first_token_s = offload.first_token_timeout_ms / 1000.0
        self._idle_s = offload.idle_timeout_ms / 1000.0
        self._bus_settled_at = -float("inf")  # when the router's connection last came back

    def target(self, node: str, model: str, job_type: JobType, slot_type: str) -> NodeTarget:
        return NodeTarget(node, model, job_type, slot_type, self)

    def reconnected(self) -> None:
        """The router's own NATS connection is back: no responders mean little for a while."""
        self._bus_settled_at = self._clock()

    async def attempt(self, target: NodeTarget, asked: Asked) -> Outcome:
        if asked.on_model is not None:
            asked.on_model(target.model)
        try:
            outcome = await self._send(target, asked)
        except asyncio.CancelledError:  # the caller went away: neutral, and a trial ends
            self._breakers.record(target.node, target.job_type, "neutral", self._clock())
            raise
        self._breakers.record(
            target.node, target.job_type, next_action(outcome).health, self._clock()
        )
        record = Attempt(
            via="remote",
            node=target.node,
            model=target.model,
            outcome=outcome.code or "ok",
            ms=outcome.elapsed_ms,
        )
        return replace(outcome, attempts=(record,))

    async def _send(self, target: NodeTarget, asked: Asked) -> Outcome:
        if self._slots.locked():  # wait for a slot, within the budget
            try:
                async with asyncio.timeout(asked.deadline - self._clock()):
                    await self._slots.acquire()
            except TimeoutError:
                error = InferbusError(ErrorCode.DEADLINE_EXCEEDED, "no free remote slot in time")
                failure = JobResponse.failure(asked.job.job_id, error)
                return Outcome(failure, "timed_out", budget_bound=True)
        else:
            await self._slots.acquire()  # a free slot is taken at once
        self._liveness.hold(target.node)
        try:
            with self._fleet.job_on(target.node, target.slot_type):
                left_s = asked.deadline - self._clock()
                waits = Waits(
                    total_s=min(left_s, self._cap_s),
                    budget_bound=left_s <= self._cap_s,
                    first_token_s=self._first_token_s,
                    idle_s=self._idle_s,
                )
                outcome = await self._link.attempt(
                    target.node,
                    target.job_type,
                    asked.job,
                    target.model,
                    waits,
                    asked.on_piece,
                    trace=asked.trace,
                )
        finally:
            self._liveness.release(target.node)
            self._slots.release()
        if outcome.ending in ("no_responders", "lost") and self._bus_settling(target.node):
            outcome = replace(outcome, bus_settling=True)
        return outcome

    def _bus_settling(self, node: str) -> bool:
        """The router's connection is down, or came back less than a heartbeat ago."""
        if not self._connected():
            return True
        view = self._fleet.nodes.get(node)
        heartbeat_s = view.record.ttl_s / 3 if view is not None else 10.0
        return self._clock() - self._bus_settled_at < heartbeat_s
