"""Backpressure: a fixed number of job slots per job type, refused at once when full.

Never a queue: a job that finds no free slot is answered BUSY immediately, so the caller
(a router, or an operator) can go to another node instead of waiting behind this one.
Code jobs share the llm slots: they run on the same runtimes. Embed jobs have slots of
their own: they are short and many, and must not queue behind long generations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.wire import JobType


def slot_kind(job_type: JobType) -> str:
    return job_type if job_type in ("vision", "embed") else "llm"


@dataclass
class Load:
    inflight: int
    capacity: int


class Admission:
    def __init__(
        self,
        *,
        llm_capacity: int,
        vision_capacity: int,
        embed_capacity: int = 4,
        on_saturation_change: Callable[[], None] = lambda: None,
    ) -> None:
        # Called when a kind becomes full or stops being full: the registry re-announces.
        self._on_saturation_change = on_saturation_change
        self._load = {
            "llm": Load(inflight=0, capacity=llm_capacity),
            "vision": Load(inflight=0, capacity=vision_capacity),
            "embed": Load(inflight=0, capacity=embed_capacity),
        }

    def try_acquire(self, job_type: JobType) -> bool:
        """Take a slot if one is free; never waits."""
        load = self._load[slot_kind(job_type)]
        if load.inflight >= load.capacity:
            return False
        load.inflight += 1
        if load.inflight == load.capacity:
            self._on_saturation_change()
        return True

    def release(self, job_type: JobType) -> None:
        load = self._load[slot_kind(job_type)]
        was_full = load.inflight >= load.capacity
        load.inflight = max(0, load.inflight - 1)
        if was_full and load.inflight < load.capacity:
            self._on_saturation_change()

    def load(self) -> dict[str, Load]:
        """A copy of the load per slot kind, for capabilities and metrics."""
        return {kind: Load(load.inflight, load.capacity) for kind, load in self._load.items()}
