"""One run per key across processes and restarts: a leased claim in the shared store.

A process about to run a job with an idempotency key first claims the key in its space of
the shared bucket (`services.keystore`): the winner runs it and renews its lease every
third of `lease_s` while it runs, then leaves the answer there (or frees the key when the
answer is a failure worth retrying). A process that finds the key claimed by a live lease
waits for that answer and replays it; one that finds the lease run out (its owner died or
hung) takes the key over, so a retry after a SIGKILL runs within `lease_s`. The owner is
the process's name plus an instance of its own, so a restarted process does not mistake
its predecessor's claim for its own.

Routers use it in their space for every keyed request (router/admission/idempotency.py),
workers in their node's space for their own restarts and replicas (node_worker/jobs.py).

    Ran(value)        this process won the key and ran it
    Replayed(answer)  the key was answered (now or before): the answer, `cached: true`
    Refused(answer)   the key holds another job (IDEMPOTENCY_MISMATCH), or the budget
                      ran out waiting for its owner (DEADLINE_EXCEEDED); no job id
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.deadlines import left_ms
from services.errors import ErrorCode, InferbusError
from services.keystore import ClaimResult, Found, Next, Record, SharedKeys, decide_claim
from services.wire import JobResponse, is_replayable

log = logging.getLogger("inferbus.shared_claims")

# How often a process waiting for another one's answer reads the key again.
POLL_S = 0.05

T = TypeVar("T")


@dataclass(frozen=True)
class Ran(Generic[T]):
    value: T


@dataclass(frozen=True)
class Replayed:
    answer: JobResponse


@dataclass(frozen=True)
class Refused:
    answer: JobResponse


# Whether a record found under the key is the same job as the one about to run.
SameJob = Callable[[Record], bool]


class SharedClaims:
    def __init__(
        self,
        keys: SharedKeys,
        *,
        owner: str,
        lease_s: float,
        op_timeout_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        unix_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        """`op_timeout_s`: the longest one store operation may take before the store
        counts as unreachable (None: the NATS client's own timeout)."""
        self._keys = keys
        self._owner = f"{owner}/{uuid.uuid4().hex[:8]}"
        self._lease_s = lease_s
        self._op_timeout_s = op_timeout_s
        self._monotonic = monotonic
        self._unix_ms = unix_ms

    async def run_once(
        self,
        key: str,
        record: Record,
        same_job: SameJob,
        deadline_s: float,
        run: Callable[[], Awaitable[T]],
        answer_of: Callable[[T], JobResponse | None],
    ) -> Ran[T] | Replayed | Refused:
        """`run()` if this process wins the key; else the winner's answer.

        `record` is the claim to write (its `job` and `model`; owner and lease are set
        here); `answer_of` is what of `run()`'s result the key keeps (None: nothing).
        """
        # Most keys are new: try to claim first and read only when someone holds the key.
        found: Found | None = None
        for attempt in itertools.count():
            if attempt > 0:
                found = await self._within(self._keys.read(key), deadline_s, None)
            action = decide_claim(found, self._unix_ms())
            if found is not None and found.record is not None and action is not Next.TAKE:
                if not same_job(found.record):
                    return Refused(_refusal(ErrorCode.IDEMPOTENCY_MISMATCH, _mismatch(key)))
                if action is Next.REPLAY and found.record.response is not None:
                    return Replayed(found.record.response.model_copy(update={"cached": True}))
                if self._left_s(deadline_s) <= 0:
                    return Refused(_refusal(ErrorCode.DEADLINE_EXCEEDED, _SPENT_WAITING))
                await asyncio.sleep(min(POLL_S, self._left_s(deadline_s)))
                continue
            claim = self._claim_record(record)
            claimed = await self._within(self._keys.claim(key, claim, over=found), deadline_s, None)
            if claimed is None or claimed.result is ClaimResult.UNAVAILABLE:
                log.warning("idempotency store unreachable: running %s unguarded", key)
                return Ran(await run())
            if claimed.result is ClaimResult.LOST:
                # Another process wrote first: see what it wrote. A store that refuses the
                # write but cannot be read is retried at the poll pace, within the budget.
                if attempt > 0 and found is None:
                    if self._left_s(deadline_s) <= 0:
                        return Refused(_refusal(ErrorCode.DEADLINE_EXCEEDED, _NO_STORE))
                    await asyncio.sleep(POLL_S)
                continue
            return Ran(await self._run_claimed(key, claim, claimed.revision, run, answer_of))
        raise AssertionError("itertools.count() never ends")

    async def _run_claimed(
        self,
        key: str,
        claim: Record,
        revision: int,
        run: Callable[[], Awaitable[T]],
        answer_of: Callable[[T], JobResponse | None],
    ) -> T:
        # Stopped by an event, never cancelled: a cancellation landing in the middle of a
        # renewal could be lost inside the NATS client (the renewals then go on forever),
        # or leave us without the revision the server wrote (the answer is then refused).
        stop = asyncio.Event()
        renewing = asyncio.create_task(self._renew(key, revision, claim, stop))
        answer: JobResponse | None = None
        try:
            result = await run()
            answer = answer_of(result)
        finally:
            stop.set()
            last = await renewing
            if answer is not None and is_replayable(answer):
                done = claim.model_copy(
                    update={"state": "done", "owner": "", "lease_until_unix_ms": 0.0}
                )
                await self._keys.answer(key, done.model_copy(update={"response": answer}), last)
            else:
                await self._keys.release(key, last)
        return result

    async def _renew(self, key: str, revision: int, claim: Record, stop: asyncio.Event) -> int:
        """Extend the lease until `stop`; the result is the revision last written."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._lease_s / 3):
                    await stop.wait()
            if stop.is_set():
                return revision
            renewed = claim.model_copy(update={"lease_until_unix_ms": self._lease_until()})
            result = await self._keys.renew(key, renewed, revision)
            if result.result is ClaimResult.LOST:
                log.warning("claim on %s taken over: our lease had run out", key)
                return revision
            if result.result is ClaimResult.WON:
                revision = result.revision

    async def _within(self, step: Awaitable[T], deadline_s: float, otherwise: T) -> T:
        """A store step, given up (`otherwise`) past the budget or `op_timeout_s`: an
        unreachable store must not eat the caller's budget."""
        limit = self._left_s(deadline_s)
        if self._op_timeout_s is not None:
            limit = min(limit, self._op_timeout_s)
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                return await step
        except TimeoutError:
            log.warning("idempotency store did not answer within %.0f ms", limit * 1000)
            return otherwise

    def _left_s(self, deadline_s: float) -> float:
        return left_ms(deadline_s, self._monotonic()) / 1000.0

    def _claim_record(self, record: Record) -> Record:
        return record.model_copy(
            update={
                "state": "running",
                "owner": self._owner,
                "lease_until_unix_ms": self._lease_until(),
                "response": None,
            }
        )

    def _lease_until(self) -> float:
        return self._unix_ms() + self._lease_s * 1000.0


_SPENT_WAITING = "budget spent waiting for the process that runs the same key"
_NO_STORE = "the idempotency store did not answer"


def _mismatch(key: str) -> str:
    return f"idempotency key {key!r} was used for a different job"


def _refusal(code: ErrorCode, message: str) -> JobResponse:
    return JobResponse.failure("", InferbusError(code, message))
