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

from services.wire import JobRequest, JobResponse, JobType, decode_request, is_replayable

# A kept answer holds its job's bytes up to this size, to fingerprint them only if a
# duplicate comes; a bigger job is fingerprinted when its answer is kept.
KEEP_JOB_BYTES = 4096


class JobFingerprint:
    """`JobRequest.fingerprint()` of a job, worked out only when a duplicate of its key
    needs it: most keys never repeat, and the fingerprint serialises the whole job."""

    __slots__ = ("_data", "_request", "_type", "_value")

    def __init__(self, request: JobRequest, data: bytes, job_type: JobType) -> None:
        self._request: JobRequest | None = request
        self._data: bytes | None = data
        self._type = job_type
        self._value: str | None = None

    @property
    def value(self) -> str:
        if self._value is None:
            request = self._request or decode_request(self._data or b"", default_type=self._type)
            assert isinstance(request, JobRequest), "the job was read once already"
            self._value = request.fingerprint()
            self._request = self._data = None
        return self._value

    def kept(self) -> JobFingerprint:
        """Ready to be kept with an answer: the job's bytes if small, else the value."""
        if self._value is None and len(self._data or b"") > KEEP_JOB_BYTES:
            _ = self.value
        self._request = None
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobFingerprint) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Running:
    fingerprint: JobFingerprint
    model: str | None
    outcome: asyncio.Future[JobResponse]

    def same_job(self, fingerprint: JobFingerprint, model: str | None) -> bool:
        return self.model == model and self.fingerprint == fingerprint


@dataclass(frozen=True)
class Completed:
    fingerprint: JobFingerprint
    model: str | None
    response: JobResponse

    def same_job(self, fingerprint: JobFingerprint, model: str | None) -> bool:
        return self.model == model and self.fingerprint == fingerprint


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

    def begin(self, key: str, fingerprint: JobFingerprint, model: str | None) -> Running:
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
            kept = Completed(running.fingerprint.kept(), running.model, response)
            self._remember(key, kept)
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
