"""Backpressure: a number of job slots per job type, refused at once when full.

The number follows what the runtimes say they run at once (`node_capacity`), capped by
configuration.

Never a queue: a job that finds no free slot is answered BUSY immediately, so the caller
(a router, or an operator) can go to another node instead of waiting behind this one.
Code jobs share the llm slots: they run on the same runtimes. Embed jobs have slots of
their own: they are short and many, and must not queue behind long generations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from services.wire import JobType, slot_kind


@dataclass
class SlotLoad:
    inflight: int
    capacity: int


def node_capacity(configured: int, runtime_slots: Iterable[int | None]) -> int:
    """The jobs of one kind the node takes at once: the sum of what each runtime serving
    that kind says it runs at once (llama.cpp's `total_slots`), the configured number for
    a runtime that does not say (Ollama's OLLAMA_NUM_PARALLEL is not visible), capped by
    the configured number. With no runtime serving it: the configured number."""
    slots = [configured if each is None else each for each in runtime_slots]
    return min(configured, sum(slots)) if slots else configured


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
            "llm": SlotLoad(inflight=0, capacity=llm_capacity),
            "vision": SlotLoad(inflight=0, capacity=vision_capacity),
            "embed": SlotLoad(inflight=0, capacity=embed_capacity),
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

    def resize(self, kind: str, capacity: int) -> None:
        """A new capacity for a slot kind; jobs already in flight keep their slots."""
        load = self._load[kind]
        if capacity == load.capacity:
            return
        was_full = load.inflight >= load.capacity
        load.capacity = max(1, capacity)
        if was_full != (load.inflight >= load.capacity):
            self._on_saturation_change()

    def load(self) -> dict[str, SlotLoad]:
        """A copy of the load per slot kind, for capabilities and metrics."""
        return {kind: SlotLoad(load.inflight, load.capacity) for kind, load in self._load.items()}
