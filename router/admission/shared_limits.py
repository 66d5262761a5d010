"""Tenants' rpm and tpm counted across every router, in JetStream KV (`limits.shared`).

One counter per (tenant, limit, wall-clock minute): `rpm.<tenant>.<minute>` counts the
requests admitted in that minute, `tpm.<tenant>.<minute>` the tokens answered. A request
is admitted by a compare-and-set increment (`kv.update` at the revision read, `kv.create`
for the minute's first): of two routers racing for a tenant's last request of the minute
exactly one gets it, so routers together never grant more than the limit in a minute.
The windows are the wall clock's minutes (routers' clocks kept in sync, NTP): a tenant
may spend its limit at the end of one minute and again at the start of the next, where
the in-process count is a sliding 60 s. Counters expire with the bucket's TTL. The same
bucket holds the tenants' running calls (`max_concurrent`, router/admission/shared_running.py).

Availability first: a store that cannot be read or written admits the request (and says
so in the log, once per outage); the router's own in-process counts do not stand in.
Every NATS error is translated here, once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from router.admission.limits import Refusal
from router.admission.tenants import TenantLimits

__all__ = ["LimitsStoreUnavailable", "SharedCounters", "open_bucket"]

log = logging.getLogger("inferbus.router.limits")

_TTL_S = 180.0  # a minute's counters outlive the minute after it
_RACES = 16  # compare-and-set retries before the request is admitted anyway


class SharedCounters:
    """The KV edge of shared limits; every method answers, none raises."""

    def __init__(
        self,
        kv: KeyValue,
        wall_clock: Callable[[], float],
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        """While not `connected` the store counts as unreachable at once (a request would
        wait for its timeout)."""
        self._kv = kv
        self._wall_clock = wall_clock
        self._connected = connected
        self._unavailable = False

    async def admit(self, tenant: str, limits: TenantLimits) -> Refusal | None:
        """Count one request of `tenant` across routers, or say which limit refuses it."""
        now = self._wall_clock()
        minute = int(now // 60)
        next_minute_ms = max(100, math.ceil(((minute + 1) * 60 - now) * 1000))
        if limits.tpm is not None:
            used = (await self._read(_key("tpm", tenant, minute)))[0]
            if used >= limits.tpm:
                message = f"tenant {tenant!r} is at its tpm limit ({limits.tpm} tokens per minute)"
                return Refusal("tpm", next_minute_ms, f"{message}, across routers")
        if limits.rpm is None:
            return None
        if not await self._add(_key("rpm", tenant, minute), 1, ceiling=limits.rpm):
            message = f"tenant {tenant!r} is at its rpm limit ({limits.rpm} requests per minute)"
            return Refusal("rpm", next_minute_ms, f"{message}, across routers")
        return None

    async def used(self, tenant: str, tokens: int) -> None:
        """Add the tokens an answer used to the tenant's minute."""
        if tokens > 0:
            minute = int(self._wall_clock() // 60)
            await self._add(_key("tpm", tenant, minute), tokens, ceiling=None)

    async def _read(self, key: str) -> tuple[int, int]:
        """(value, revision); (0, 0) for a counter nobody wrote (or an unreadable one)."""
        if not self._connected():
            self._lost(ConnectionError("not connected to NATS"))
            return 0, 0
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return 0, 0
        except (nats.errors.Error, OSError) as error:
            self._lost(error)
            return 0, 0
        self._unavailable = False
        try:
            value = int(entry.value or b"0")
        except ValueError:
            value = 0
        return value, entry.revision or 0

    async def _add(self, key: str, amount: int, *, ceiling: int | None) -> bool:
        """Add `amount` unless that would pass `ceiling`; False: it would have."""
        if not self._connected():
            self._lost(ConnectionError("not connected to NATS"))
            return True
        for _ in range(_RACES):
            value, revision = await self._read(key)
            if ceiling is not None and value + amount > ceiling:
                return False
            data = str(value + amount).encode()
            try:
                if revision == 0:
                    await self._kv.create(key, data)
                else:
                    await self._kv.update(key, data, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another router counted first: read again
            except (nats.errors.Error, OSError) as error:
                self._lost(error)
                return True
            return True
        log.warning("shared limit %s: too many racing routers; admitted uncounted", key)
        return True

    def _lost(self, error: BaseException) -> None:
        if not self._unavailable:
            log.warning("shared limits store unavailable (%s): admitting", type(error).__name__)
        self._unavailable = True


class LimitsStoreUnavailable(Exception):
    """The shared limits' bucket cannot be made or bound at start-up: what is missing."""


async def open_bucket(nc: NatsClient, bucket: str) -> KeyValue:
    """Create the shared limits' bucket, or bind to the one there. Reads are direct gets
    (`$JS.API.DIRECT.GET.KV_<bucket>.>`, the grant ops/nats gives routers). Raises
    LimitsStoreUnavailable, or `nats.errors.Error` when JetStream refuses otherwise (a
    configuration error, for start-up)."""
    js = nc.jetstream()
    try:
        kv = await js.create_key_value(bucket=bucket, ttl=_TTL_S, history=1, direct=True)
    except nats.errors.NoRespondersError:
        raise LimitsStoreUnavailable(
            f"limits.shared: JetStream is not enabled on the NATS server (bucket {bucket})"
        ) from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise LimitsStoreUnavailable(
            f"limits.shared: no answer to $JS.API.STREAM.CREATE.KV_{bucket}: JetStream is off "
            "for this account, or the router's NATS user lacks the limits bucket's grants "
            "(ops/nats/README.md)"
        ) from None
    except nats.js.errors.BadRequestError:
        kv = await js.key_value(bucket)
        info = await js.stream_info(f"KV_{bucket}")
        if not info.config.allow_direct:
            log.warning(
                "the shared limits bucket %s reads without direct get, which the shipped "
                "NATS permissions do not grant: delete it (nats kv del %s) and restart",
                bucket,
                bucket,
            )
    return kv


def _key(limit: str, tenant: str, minute: int) -> str:
    """KV keys allow few characters: the tenant's name goes hex-encoded."""
    return f"{limit}.{tenant.encode().hex()}.{minute}"
