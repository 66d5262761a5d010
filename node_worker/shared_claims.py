"""One runtime call per key across workers and restarts: a leased claim in JetStream KV.

The in-process store (`idempotency.py`) keeps a key to one call inside one worker. With
`idempotency.store = "jetstream"` a job that is about to call its runtime first claims its
key in the shared bucket (`services.keystore`): the winner runs it and renews its lease
every third of `lease_s` while the runtime works, then leaves the answer there (or frees
the key when the answer is a failure worth retrying). A worker that finds the key claimed
by a live lease waits for that answer and replays it; one that finds the lease run out
(its owner died or hung) takes the key over, so a retry after a SIGKILL runs within
`lease_s`. The owner is the node id plus this process's instance, so a restarted worker
does not mistake its predecessor's claim for its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from services.deadlines import left_ms
from services.errors import ErrorCode, InferbusError
from services.keystore import ClaimResult, Found, Next, Record, SharedKeys, decide_claim
from services.wire import JobResponse, is_replayable

log = logging.getLogger("inferbus.worker.shared_claims")

# How often a worker waiting for another node's answer reads the key again.
POLL_S = 0.05


class SharedClaims:
    def __init__(
        self,
        keys: SharedKeys,
        *,
        node_id: str,
        lease_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        unix_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self._keys = keys
        self._owner = f"{node_id}/{uuid.uuid4().hex[:8]}"
        self._lease_s = lease_s
        self._monotonic = monotonic
        self._unix_ms = unix_ms

    async def run_once(
        self,
        key: str,
        fingerprint: str,
        model: str | None,
        deadline_s: float,
        run: Callable[[], Awaitable[JobResponse]],
    ) -> JobResponse:
        """`run()` if this process wins the key; else the winner's answer (`cached: true`).

        Answers without a job id: the caller sets its own.
        """
        # Most keys are new: try to claim first and read only when someone holds the key.
        found: Found | None = None
        for attempt in itertools.count():
            if attempt > 0:
                found = await self._keys.read(key)
            action = decide_claim(found, self._unix_ms())
            if found is not None and action is not Next.TAKE:
                if found.record.job != fingerprint or found.record.model != model:
                    return _refusal(
                        ErrorCode.IDEMPOTENCY_MISMATCH,
                        f"idempotency key {key!r} was used for a different job",
                    )
                if action is Next.REPLAY and found.record.response is not None:
                    return found.record.response.model_copy(update={"cached": True})
                left_s = left_ms(deadline_s, self._monotonic()) / 1000.0
                if left_s <= 0:
                    return _refusal(
                        ErrorCode.DEADLINE_EXCEEDED,
                        "budget spent waiting for the node that runs the same key",
                    )
                await asyncio.sleep(min(POLL_S, left_s))
                continue
            claim = self._claim_record(fingerprint, model)
            claimed = await self._keys.claim(key, claim, over=found)
            if claimed.result is ClaimResult.LOST:
                # Another process wrote first: see what it wrote. A store that refuses the
                # write but cannot be read is retried at the poll pace, within the budget.
                if attempt > 0 and found is None:
                    if left_ms(deadline_s, self._monotonic()) <= 0:
                        return _refusal(
                            ErrorCode.DEADLINE_EXCEEDED, "the idempotency store did not answer"
                        )
                    await asyncio.sleep(POLL_S)
                continue
            if claimed.result is ClaimResult.UNAVAILABLE:
                log.warning("idempotency store unreachable: running %s unguarded", key)
                return await run()
            return await self._run_claimed(key, claim, claimed.revision, run)
        raise AssertionError("itertools.count() never ends")

    async def _run_claimed(
        self,
        key: str,
        claim: Record,
        revision: int,
        run: Callable[[], Awaitable[JobResponse]],
    ) -> JobResponse:
        renewing = asyncio.create_task(self._renew(key, revision, claim))
        response: JobResponse | None = None
        try:
            response = await run()
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            last = _last_revision(renewing, revision)
            if response is not None and is_replayable(response):
                done = Record(state="done", job=claim.job, model=claim.model, response=response)
                await self._keys.answer(key, done, last)
            else:
                await self._keys.release(key, last)
        return response

    async def _renew(self, key: str, revision: int, claim: Record) -> int:
        """Extend the lease until cancelled; the result is the revision last written."""
        try:
            while True:
                await asyncio.sleep(self._lease_s / 3)
                renewed = claim.model_copy(update={"lease_until_unix_ms": self._lease_until()})
                result = await self._keys.renew(key, renewed, revision)
                if result.result is ClaimResult.LOST:
                    log.warning("claim on %s taken over: our lease had run out", key)
                    return revision
                if result.result is ClaimResult.WON:
                    revision = result.revision
        except asyncio.CancelledError:
            return revision

    def _claim_record(self, fingerprint: str, model: str | None) -> Record:
        return Record(
            state="running",
            job=fingerprint,
            model=model,
            owner=self._owner,
            lease_until_unix_ms=self._lease_until(),
        )

    def _lease_until(self) -> float:
        return self._unix_ms() + self._lease_s * 1000.0


def _last_revision(renewing: asyncio.Task[int], first: int) -> int:
    if renewing.done() and not renewing.cancelled() and renewing.exception() is None:
        return renewing.result()
    return first


def _refusal(code: ErrorCode, message: str) -> JobResponse:
    return JobResponse.failure("", InferbusError(code, message))
