"""Idempotency: a repeated job key gets the first job's answer, never a second runtime call.

Two layers: jobs still running (in this process: duplicates wait on the same future) and
completed answers (aiocache, in memory by default, kept `ttl_s` and at most `max_entries`).
Only answers that would be the same next time are kept: `ok`, and errors that are the
request's own fault. BUSY, deadline and runtime failures are not, so a retry really runs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiocache import SimpleMemoryCache
from aiocache.base import BaseCache

from services.wire import JobResponse, is_replayable

log = logging.getLogger("inferbus.worker.idempotency")


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
    def __init__(self, *, ttl_s: float, max_entries: int, cache: BaseCache | None = None) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        # timeout=None: aiocache would otherwise wrap every call in asyncio.wait_for.
        self._cache: BaseCache = cache or SimpleMemoryCache(timeout=None)
        self._running: dict[str, Running] = {}
        self._stored_keys: dict[str, None] = {}  # insertion order, for the entry bound

    def running(self, key: str) -> Running | None:
        return self._running.get(key)

    async def completed(self, key: str) -> Completed | None:
        found: Completed | None = await self._cache.get(key)
        return found

    def begin(self, key: str, fingerprint: str, model: str | None) -> Running:
        """Mark a job as running so duplicates arriving meanwhile wait for it."""
        running = Running(fingerprint, model, asyncio.get_running_loop().create_future())
        self._running[key] = running
        return running

    async def finish(self, key: str, response: JobResponse) -> None:
        """Keep the answer if it may be replayed, then release the waiters. Never raises.

        The answer is stored before the job leaves the running table, so a duplicate
        arriving in between (a remote cache awaits for real) joins instead of running again.
        """
        running = self._running.get(key)
        if running is None:
            return
        if is_replayable(response):
            try:
                await self._remember(key, Completed(running.fingerprint, running.model, response))
            except Exception:
                log.exception("idempotency cache write failed; answer not kept")
        self._running.pop(key, None)
        if not running.outcome.done():
            running.outcome.set_result(response)

    async def _remember(self, key: str, completed: Completed) -> None:
        await self._cache.set(key, completed, ttl=self._ttl_s)
        self._stored_keys.pop(key, None)
        self._stored_keys[key] = None
        while len(self._stored_keys) > self._max_entries:
            oldest = next(iter(self._stored_keys))
            del self._stored_keys[oldest]
            await self._cache.delete(oldest)
