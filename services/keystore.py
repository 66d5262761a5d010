"""The shared idempotency store in NATS JetStream KV: one record per key, for every process.

A record is either a *claim* (the node running the key now, with a lease it renews) or
the *answer* (kept for the bucket's TTL). Claims are taken by compare-and-set: `kv.create`
for a key nobody holds, `kv.update` at the revision read for a claim whose lease has run
out. Of two nodes that race for one key exactly one runs it; a node that dies stops
renewing and the key is free again once its lease has passed, so a retry runs elsewhere.

KV keys allow only `[-/_=.a-zA-Z0-9]`; idempotency keys may hold anything, so the KV key
is a hash of the key. Leases are wall-clock (unix ms) because they are read on other
machines: fleets using this store keep their clocks synced (NTP), and a skew larger than
a lease lets a claim be taken over early.

Every NATS error is translated here, once: reads of an unreachable store find nothing,
and a claim that cannot be written is `UNAVAILABLE` — the caller then runs the job
without the shared guard (availability first) and says so in its log.

    decide_claim(found, now_unix_ms)            pure: take it, wait for its owner, or replay
    SharedKeys.open(nc, bucket=..., ttl_s=...)   the KV edge: read, claim, renew, answer, release
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import nats.errors
import nats.js.errors
import pydantic
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue
from pydantic import BaseModel

from services.wire import JobResponse

log = logging.getLogger("inferbus.keystore")

DEFAULT_BUCKET = "inferbus_idempotency"
# JetStream keeps a bucket's TTL in int64 nanoseconds and refuses a longer one (the bucket
# is then never created): processes bound `idempotency.ttl_s` by it at start.
MAX_TTL_S = (2**63 - 1) // 10**9


def kv_key(key: str) -> str:
    """The KV key for an idempotency key: a hash, since KV keys allow few characters."""
    return "k" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


class Record(BaseModel):
    """What the bucket holds per key (JSON)."""

    state: Literal["running", "done"]
    job: str  # JobRequest.fingerprint() of the job that holds the key
    model: str | None  # the model it resolved to
    owner: str = ""  # running: who runs it (node id + process instance)
    lease_until_unix_ms: float = 0.0  # running: free for others after this
    response: JobResponse | None = None  # done: the answer to replay


@dataclass(frozen=True)
class Found:
    record: Record
    revision: int


class Next(StrEnum):
    TAKE = "take"  # nobody holds it, or the holder's lease ran out: claim it
    WAIT = "wait"  # another process runs it now: wait for its answer
    REPLAY = "replay"  # answered: replay the answer


def decide_claim(found: Found | None, now_unix_ms: float) -> Next:
    """What a process that wants to run a key does, given what the store holds."""
    if found is None:
        return Next.TAKE
    record = found.record
    if record.state == "done":
        return Next.REPLAY
    return Next.WAIT if record.lease_until_unix_ms > now_unix_ms else Next.TAKE


class ClaimResult(StrEnum):
    WON = "won"
    LOST = "lost"  # someone else wrote first: read again
    UNAVAILABLE = "unavailable"  # the store cannot be reached


@dataclass(frozen=True)
class Claimed:
    result: ClaimResult
    revision: int = 0


class SharedKeys:
    """One KV bucket of idempotency records; every method answers, none raises."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, nc: NatsClient, *, bucket: str, ttl_s: float) -> SharedKeys:
        """Create the bucket (TTL = how long answers are kept), or bind to an existing one.

        Raises `nats.errors.Error` when JetStream is not there: a configuration error that
        should stop the process at start, not a runtime fault.
        """
        js = nc.jetstream()
        try:
            kv = await js.create_key_value(bucket=bucket, ttl=ttl_s, history=1)
        except nats.js.errors.BadRequestError:
            # It exists with another configuration (e.g. another TTL): use it as it is.
            kv = await js.key_value(bucket)
        return cls(kv)

    async def read(self, key: str) -> Found | None:
        try:
            entry = await self._kv.get(kv_key(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, OSError) as error:
            log.warning("idempotency store unreadable: %s", type(error).__name__)
            return None
        if entry.value is None or entry.revision is None:
            return None
        try:
            record = Record.model_validate_json(entry.value)
        except pydantic.ValidationError:
            log.warning("idempotency record for %s unreadable; treated as free", kv_key(key))
            return Found(Record(state="running", job="", model=None), entry.revision)
        return Found(record, entry.revision)

    async def claim(self, key: str, record: Record, over: Found | None) -> Claimed:
        """Write a claim: as a new key, or over `over` (a claim whose lease ran out)."""
        return await self._write(key, record, over.revision if over else 0)

    async def renew(self, key: str, record: Record, revision: int) -> Claimed:
        """Extend our lease; LOST means someone took the key over (our lease had run out)."""
        return await self._write(key, record, revision)

    async def answer(self, key: str, record: Record, revision: int) -> None:
        """Replace our claim with the answer, for every later duplicate to replay."""
        claimed = await self._write(key, record, revision)
        if claimed.result is not ClaimResult.WON:
            log.warning("idempotency answer for %s not kept (%s)", kv_key(key), claimed.result)

    async def release(self, key: str, revision: int) -> None:
        """Drop our claim without an answer (a failure worth retrying): the key is free."""
        try:
            await self._kv.delete(kv_key(key), last=revision)
        except (nats.errors.Error, OSError) as error:
            log.warning("idempotency claim not released: %s", type(error).__name__)

    async def _write(self, key: str, record: Record, last: int) -> Claimed:
        value = record.model_dump_json(exclude_none=True).encode()
        try:
            if last == 0:
                revision = await self._kv.create(kv_key(key), value)
            else:
                revision = await self._kv.update(kv_key(key), value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            return Claimed(ClaimResult.LOST)
        except (nats.errors.Error, OSError) as error:
            log.warning("idempotency store unwritable: %s", type(error).__name__)
            return Claimed(ClaimResult.UNAVAILABLE)
        return Claimed(ClaimResult.WON, revision)
