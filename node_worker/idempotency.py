"""Idempotency: a repeated job key gets the first job's answer, never a second runtime call.

Two layers in this process: jobs still running (duplicates wait on the same future) and
completed answers (kept `ttl_s`, at most `max_entries`, oldest first out). Only answers
that would be the same next time are kept: `ok`, and errors that are the request's own
fault. BUSY, deadline and runtime failures are not, so a retry really runs. Across the
processes of a node the shared store guards keys (`services.shared_claims`).

The completed answers are a plain dict in insertion order, read and written without an
await: every job passes here twice, and a cache library's per-call bookkeeping cost more
than the lookup (ops/bench/whole_path_bench.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.wire import JobResponse, is_replayable


@dataclass(frozen=True)
class Running:
    fingerprint: str
    model: str | None
    outcome: asyncio.Future[JobResponse]

    def same_job(self, fingerprint: str, model: str | None) -> bool:
        return self.fingerprint == fingerprint and self.model == model


@dataclass(frozen=True)
class Completed:
    fingerprint: str
    model: str | None
    response: JobResponse

    def same_job(self, fingerprint: str, model: str | None) -> bool:
        return self.fingerprint == fingerprint and self.model == model


class IdempotencyStore:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._running: dict[str, Running] = {}
        # key -> (expires at, answer), in insertion order: the first is the oldest.
        self._completed: dict[str, tuple[float, Completed]] = {}

    def running(self, key: str) -> Running | None:
        return self._running.get(key)

    def completed(self, key: str) -> Completed | None:
        found = self._completed.get(key)
        if found is None:
            return None
        expires_s, completed = found
        if self._monotonic() >= expires_s:
            del self._completed[key]
            return None
        return completed

    def begin(self, key: str, fingerprint: str, model: str | None) -> Running:
        """Mark a job as running so duplicates arriving meanwhile wait for it."""
        running = Running(fingerprint, model, asyncio.get_running_loop().create_future())
        self._running[key] = running
        return running

    def finish(self, key: str, response: JobResponse) -> None:
        """Keep the answer if it may be replayed, then release the waiters. Never raises."""
        running = self._running.pop(key, None)
        if running is None:
            return
        if is_replayable(response):
            self._remember(key, Completed(running.fingerprint, running.model, response))
        if not running.outcome.done():
            running.outcome.set_result(response)

    def _remember(self, key: str, completed: Completed) -> None:
        now_s = self._monotonic()
        self._completed.pop(key, None)  # a key kept again goes to the end
        self._completed[key] = (now_s + self._ttl_s, completed)
        # One ttl for all: the oldest expires first. Drop those past it, and past the bound.
        while True:
            oldest = next(iter(self._completed))
            if self._completed[oldest][0] > now_s and len(self._completed) <= self._max_entries:
                return
            del self._completed[oldest]
