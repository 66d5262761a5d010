"""Free slots as the line sees them: which lane a call waits in, whether that lane has a
slot nobody was promised yet, and the promises (holds) until a job takes its slot.

A lane is the (model, type) selection would send a call to on the fleet now. Its free
slots are read from the fleet index — each node's record moved by the router's own
starts and ends since it, a node that answered BUSY counted full until it is heard from
again — on live nodes whose breaker is not open. A call let go holds one slot of its
lane (`Hold`) until its job takes a slot on a node (the fleet view tells, in the call's
own context) or the call ends, so one freed slot lets one call go, not all of them.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from router.attempts.board import BreakerBoard
from router.attempts.route import Route
from router.fleet.view import FleetView
from router.selection.needs import job_needs
from router.selection.profiles import SelectionConfig
from router.selection.select import Selection, select
from router.serving.dispatch import job_type_of
from services.errors import ErrorCode
from services.wire import JobRequest, slot_kind

__all__ = ["Hold", "Lane", "LaneSlots"]

Lane = tuple[str, str]  # (model, type): what a waiting call needs a slot of


@dataclass(eq=False)
class Hold:
    """A call's claim on a slot of its lane between being let go and its job taking one."""

    lane: Lane | None
    reserved: bool = False


_HOLD: contextvars.ContextVar[Hold | None] = contextvars.ContextVar("hold", default=None)


class LaneSlots:
    """Lanes, their free slots and the holds on them, for one router (module doc)."""

    def __init__(
        self,
        fleet: FleetView,
        breakers: BreakerBoard,
        *,
        selection: Callable[[], SelectionConfig],
        connected: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self._fleet = fleet
        self._breakers = breakers
        self._selection = selection
        self._connected = connected
        self._clock = clock
        self._reserved: dict[Lane, int] = {}
        self._on_slot_freed: Callable[[], None] = lambda: None
        fleet.on_job(self._job_changed)

    def when_freed(self, listener: Callable[[], None]) -> None:
        """Call `listener` when a job of the router's own gives its slot back."""
        self._on_slot_freed = listener

    def pick(self, job: JobRequest, agent_id: str | None) -> Selection | None:
        """The fleet node and model selection picks for the call now, if any (its lane;
        the dispatcher's first attempt when the call does not wait)."""
        if not self._connected():
            return None
        job_type = job_type_of(job)
        is_open = partial(self._breakers.is_open, job_type=job_type, now=self._clock())
        selection = select(
            self._selection(),
            self._fleet.index,
            agent_id=agent_id,
            request_model=job.model,
            excluded=is_open,
            job_type=job_type,
            now=self._fleet.clock(),
            needs=job_needs(job, job_type),
        )
        if selection is None or selection.source != "fleet" or selection.node is None:
            return None
        return selection

    def free(self, lane: Lane) -> bool:
        """Whether the lane has a free slot beyond those held: O(holds + 1) nodes read,
        not the lane's whole fleet."""
        index = self._fleet.index
        group = index.group(*lane)
        if group is None:
            return False
        needed = self._reserved.get(lane, 0) + 1
        kind = group.kind
        now_fleet, now = self._fleet.clock(), self._clock()
        free = 0
        for node in group.unsaturated:
            if not index.live(node, now_fleet) or self._breakers.is_open(node, lane[1], now):
                continue
            inflight, capacity = index.load(node, kind)
            free += capacity - inflight
            if free >= needed:
                return True
        return False

    def hold(self, lane: Lane) -> Hold:
        self._reserved[lane] = self._reserved.get(lane, 0) + 1
        return Hold(lane, reserved=True)

    def release(self, hold: Hold) -> None:
        if hold.reserved and hold.lane is not None:
            hold.reserved = False
            left = self._reserved.get(hold.lane, 0) - 1
            if left > 0:
                self._reserved[hold.lane] = left
            else:
                self._reserved.pop(hold.lane, None)

    @contextlib.contextmanager
    def running(self, hold: Hold) -> Iterator[None]:
        """While the block runs the call's job, the hold ends when a slot is taken."""
        token = _HOLD.set(hold)
        try:
            yield
        finally:
            _HOLD.reset(token)
            self.release(hold)

    def heard_busy(self, route: Route, job_type: str) -> None:
        """Nodes that answered BUSY count full until they are heard from again."""
        kind = slot_kind(job_type)
        for attempt in route.attempts:
            if attempt.outcome == ErrorCode.BUSY and attempt.node is not None:
                self._fleet.index.heard_busy(attempt.node, kind)

    def _job_changed(self, node: str, kind: str, started: bool) -> None:
        if started:
            hold = _HOLD.get()
            if hold is not None:
                self.release(hold)  # its slot is counted on the node from now on
        else:
            self._on_slot_freed()
