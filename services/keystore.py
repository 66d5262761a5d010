"""The shared idempotency store in NATS JetStream KV: one record per key, in spaces that
the NATS permissions keep apart.

A record is either a *claim* (the process running the key now, with a lease it renews)
or the *answer* (kept for the bucket's TTL). Claims are taken by compare-and-set:
`kv.create` for a key nobody holds, `kv.update` at the revision read for a claim whose
lease has run out. Of two processes that race for one key exactly one runs it; one that
dies stops renewing and the key is free again once its lease has passed.

Spaces (the first tokens of a KV key; ops/nats/README.md has the trust table):

    r.<hash>           routers: their claims and the answers they keep, every record
                       sealed with a key only routers hold (router/admission/sealing.py)
    n.<node>.<hash>    worker <node>: its claims and answers, for its own restarts and
                       replicas, where the operator grants a worker the store (the
                       shipped setups grant workers no JetStream at all: ops/nats/README.md)

KV keys allow only `[-/_=.a-zA-Z0-9]`; idempotency keys may hold anything, so the key's
last token is a hash of it. Leases are wall-clock (unix ms) because they are read on other
machines: fleets using this store keep their clocks synced (NTP).

The bucket is made by routers, with a configuration in which a key's grant is all that
decides who reads or writes it: reads by direct get on the key's own subject (so a grant
can name a space), no rollup headers (a `Nats-Rollup: all` publish would purge every
space), no republish, no sources. Every process checks that configuration where it can
read it (routers) and refuses a bucket that differs.

Every NATS error is translated here, once: reads of an unreachable store find nothing,
and a claim that cannot be written is `UNAVAILABLE` — the caller then runs the job
without the shared guard (availability first) and says so in its log. What stops the
store from starting at all is a `StoreUnavailable` naming it.

    decide_claim(found, now_unix_ms)           pure: take it, wait for its owner, or replay
    SharedKeys.make(nc, ...)                    routers: make or bind the bucket, check it
    SharedKeys.join(nc, ...)                    workers: bind, probing JetStream and grants
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

import nats.errors
import nats.js.errors
import pydantic
from nats.aio.client import Client as NatsClient
from nats.js import api
from nats.js.kv import KeyValue
from pydantic import BaseModel

from services.wire import JobResponse

log = logging.getLogger("inferbus.keystore")

DEFAULT_BUCKET = "inferbus_idempotency"
ROUTER_SPACE = "r"
# How long one store operation may take before the store counts as unreachable.
OP_TIMEOUT_S = 5.0
# What the bucket may hold on the server's disk at most (routers' `idempotency.max_bytes`):
# past it, a new claim or answer is refused and its job runs unguarded, logged.
DEFAULT_MAX_BYTES = 1 << 30
# JetStream keeps a bucket's TTL in int64 nanoseconds and refuses a longer one (the bucket
# is then never created): processes bound `idempotency.ttl_s` by it at start.
MAX_TTL_S = (2**63 - 1) // 10**9


def worker_space(node_id: str) -> str:
    return f"n.{node_id}"


def kv_key(space: str, key: str) -> str:
    """The KV key for an idempotency key in a space: a hash, since KV keys allow few
    characters."""
    return f"{space}.k{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"


class Record(BaseModel):
    """What the bucket holds per key (JSON)."""

    state: Literal["running", "done"]
    job: str  # JobRequest.fingerprint() of the job that holds the key
    model: str | None  # the model it resolved to
    owner: str = ""  # running: who runs it (node id or router + process instance)
    lease_until_unix_ms: float = 0.0  # running: free for others after this
    response: JobResponse | None = None  # done: the answer to replay


class Codec(Protocol):
    """How a space's records are written: plain JSON, or sealed (routers)."""

    def encode(self, kv_key: str, record: Record) -> bytes: ...

    def decode(self, kv_key: str, data: bytes) -> Record | None:
        """The record, or None when it cannot be read or verified."""
        ...


class PlainRecords:
    """JSON as it is: for a worker's own space, which only it can read and write."""

    def encode(self, kv_key: str, record: Record) -> bytes:
        return record.model_dump_json(exclude_none=True).encode()

    def decode(self, kv_key: str, data: bytes) -> Record | None:
        try:
            return Record.model_validate_json(data)
        except pydantic.ValidationError:
            return None


@dataclass(frozen=True)
class Found:
    """A record as read; `record` None: there is one, but it cannot be read or verified
    (never replayed; a claim may take the key over at its revision)."""

    record: Record | None
    revision: int


class Next(StrEnum):
    TAKE = "take"  # nobody holds it, the holder's lease ran out, or it is unreadable
    WAIT = "wait"  # another process runs it now: wait for its answer
    REPLAY = "replay"  # answered: replay the answer


def decide_claim(found: Found | None, now_unix_ms: float) -> Next:
    """What a process that wants to run a key does, given what the store holds."""
    if found is None or found.record is None:
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


class StoreUnavailable(Exception):
    """The store cannot start as configured; the message says what is missing."""


class BucketMissing(StoreUnavailable):
    """JetStream answers, but the bucket is not there (yet: routers make it)."""


def bucket_config(
    bucket: str, ttl_s: float, max_bytes: int = DEFAULT_MAX_BYTES
) -> api.StreamConfig:
    """The bucket's stream: a KV bucket in which only grants decide who reads what, of at
    most `max_bytes`."""
    return api.StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        allow_direct=True,
        allow_rollup_hdrs=False,
        deny_delete=True,
        deny_purge=True,
        discard=api.DiscardPolicy.NEW,
        duplicate_window=min(ttl_s, 120.0),
        max_age=ttl_s,
        max_msgs_per_subject=1,
        max_msgs=-1,
        max_bytes=max_bytes,
        max_msg_size=-1,
        max_consumers=-1,
    )


def bucket_faults(config: api.StreamConfig, bucket: str) -> list[str]:
    """How a bucket's configuration differs from what keeps its spaces apart."""
    faults = []
    if config.subjects != [f"$KV.{bucket}.>"]:
        faults.append(f"subjects {config.subjects}")
    if not config.allow_direct:
        faults.append("no direct get")
    if config.allow_rollup_hdrs:
        faults.append("rollup headers allowed")
    if config.republish is not None:
        faults.append("republishes its records")
    if config.mirror is not None or config.sources:
        faults.append("mirrors or sources other streams")
    if config.subject_transform is not None:
        faults.append("transforms subjects")
    if config.allow_msg_schedules or config.allow_atomic:
        faults.append("scheduled or batched publishes allowed")
    return faults


class SharedKeys:
    """One space of the KV bucket; every method but the openers answers, none raises."""

    def __init__(self, kv: KeyValue, *, space: str, codec: Codec | None = None) -> None:
        self._kv = kv
        self._space = space
        self._codec: Codec = codec or PlainRecords()

    @property
    def space(self) -> str:
        return self._space

    @classmethod
    async def make(
        cls,
        nc: NatsClient,
        *,
        bucket: str,
        ttl_s: float,
        space: str,
        codec: Codec,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout_s: float = OP_TIMEOUT_S,
    ) -> SharedKeys:
        """Make the bucket or bind to the one there, and check it (routers). One made with
        other limits (TTL, size) is used as it is.

        Raises StoreUnavailable (or a NATS error the caller reports as a start-up failure).
        """
        js = nc.jetstream(timeout=timeout_s)
        wanted = bucket_config(bucket, ttl_s, max_bytes)
        try:
            info = await js.add_stream(wanted)
        except nats.js.errors.BadRequestError:
            # There with another configuration (e.g. another TTL): used if it is safe.
            info = await js.stream_info(f"KV_{bucket}")
        faults = bucket_faults(info.config, bucket)
        if faults:
            raise StoreUnavailable(
                f"the bucket {bucket} is not as inferbus makes it ({', '.join(faults)}): "
                f"delete it (nats kv del {bucket}) and restart"
            )
        return cls(_bound(js, bucket), space=space, codec=codec)

    @classmethod
    async def join(
        cls,
        nc: NatsClient,
        *,
        bucket: str,
        space: str,
        refused: Callable[[], str | None] = lambda: None,
        timeout_s: float = OP_TIMEOUT_S,
    ) -> SharedKeys:
        """Bind to the bucket routers made (workers), proving on a key of `space` that
        JetStream answers and that the grants let this process write, read and delete it.

        `refused` gives the last permissions violation the connection reported, to name
        the missing grant. Raises StoreUnavailable, BucketMissing.
        """
        js = nc.jetstream(timeout=timeout_s)
        try:
            await js.account_info()
        except nats.errors.NoRespondersError:
            raise StoreUnavailable("JetStream is not enabled on the NATS server") from None
        except nats.js.errors.APIError as error:
            if error.description is None:  # the server's own 503: nothing serves $JS.API
                raise StoreUnavailable("JetStream is not enabled on the NATS server") from None
            raise StoreUnavailable(f"JetStream refused this account: {error.description}") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise StoreUnavailable(_no_answer("$JS.API.INFO", refused())) from None
        keys = cls(_bound(js, bucket), space=space)
        probe = f"{space}.probe"
        try:
            await keys._kv.put(probe, b"{}")
            await keys._kv.get(probe)
            await keys._kv.delete(probe)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise BucketMissing(f"the bucket {bucket} does not exist yet") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise StoreUnavailable(_no_answer(f"$KV.{bucket}.{probe}", refused())) from None
        except nats.js.errors.APIError as error:
            raise StoreUnavailable(f"the bucket {bucket} refused: {error.description}") from None
        return keys

    async def read(self, key: str) -> Found | None:
        where = kv_key(self._space, key)
        try:
            entry = await self._kv.get(where)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, OSError, TimeoutError) as error:
            log.warning("idempotency store unreadable: %s", type(error).__name__)
            return None
        if entry.value is None or entry.revision is None:
            return None
        record = self._codec.decode(where, entry.value)
        if record is None:
            log.warning("idempotency record %s unreadable or unverified: never replayed", where)
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
            log.warning(
                "idempotency answer for %s not kept (%s)", kv_key(self._space, key), claimed.result
            )

    async def release(self, key: str, revision: int) -> None:
        """Drop our claim without an answer (a failure worth retrying): the key is free."""
        try:
            await self._kv.delete(kv_key(self._space, key), last=revision)
        except (nats.errors.Error, OSError, TimeoutError) as error:
            log.warning("idempotency claim not released: %s", type(error).__name__)

    async def _write(self, key: str, record: Record, last: int) -> Claimed:
        where = kv_key(self._space, key)
        value = self._codec.encode(where, record)
        try:
            if last == 0:
                revision = await self._kv.create(where, value)
            else:
                revision = await self._kv.update(where, value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            return Claimed(ClaimResult.LOST)
        except (nats.errors.Error, OSError, TimeoutError) as error:
            log.warning("idempotency store unwritable: %s", type(error).__name__)
            return Claimed(ClaimResult.UNAVAILABLE)
        return Claimed(ClaimResult.WON, revision)


def _bound(js: nats.js.JetStreamContext, bucket: str) -> KeyValue:
    """The bucket as nats-py's KeyValue, without asking JetStream for its stream's info
    (workers are not granted that: it would list every key)."""
    return KeyValue(name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=js, direct=True)


def _no_answer(subject: str, refusal: str | None) -> str:
    if refusal and any(head in refusal.lower() for head in ("$js.", "$kv.")):
        return (
            f"not granted to this node's NATS user ({refusal}): on this setup the shared "
            'store is the routers\' (idempotency.store = "jetstream" in the router config); '
            'set idempotency.store = "memory" on this worker'
        )
    if refusal:
        return f"NATS refused a grant the idempotency store needs: {refusal}"
    return (
        f"JetStream did not answer on {subject}: a missing grant (this process's inbox "
        "prefix, or the bucket's subjects)?"
    )
