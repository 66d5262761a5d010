"""Tenants' rpm and tpm counted across every router, in JetStream KV (`limits.shared`).

One counter per (tenant, limit, wall-clock minute): `rpm.<tenant>.<minute>` counts the
requests admitted in that minute, `tpm.<tenant>.<minute>` the tokens answered. A request
is admitted by a compare-and-set increment (`kv.update` at the revision last read or
written, `kv.create` for the minute's first): of two routers racing for a tenant's last
request of the minute exactly one gets it, so routers together never grant more than the
limit in a minute. A router writes a key one write at a time: the requests that arrive
while a write is under way are counted together in the next one (a refusal is decided
only on a value just read), so requests of one router never race each other.
The windows are the wall clock's minutes (routers' clocks kept in sync, NTP): a tenant
may spend its limit at the end of one minute and again at the start of the next, where
the in-process count is a sliding 60 s. Counters expire with the bucket's TTL. The same
bucket holds the tenants' running calls (`max_concurrent`, router/admission/shared_running.py).

Availability first: a store that cannot be read or written admits the request (and says
so in the log, once per outage: router/admission/limits_bucket.py); the router's own
in-process counts do not stand in.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.js.kv import KeyValue

from router.admission.limits import Refusal
from router.admission.limits_bucket import LimitsBucket
from router.admission.tenants import TenantLimits

__all__ = ["SharedCounters", "fits_under"]

log = logging.getLogger("inferbus.router.limits")

_RACES = 16  # compare-and-set retries before the request is admitted anyway

_Add = tuple[int, int | None, "asyncio.Future[bool] | None"]  # amount, ceiling, who waits


@dataclass
class _Counter:
    """This router's side of one counter key."""

    asking: list[_Add] = field(default_factory=list)  # waiting for the next write
    known: tuple[int, int] | None = None  # the value and revision last read or written
    writing: asyncio.Task[None] | None = None


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
        self._store = LimitsBucket(kv, connected, "shared limits")
        self._wall_clock = wall_clock
        self._counters: dict[str, _Counter] = {}
        self._minute = 0

    async def admit(self, tenant: str, limits: TenantLimits) -> Refusal | None:
        """Count one request of `tenant` across routers, or say which limit refuses it."""
        now = self._wall_clock()
        minute = int(now // 60)
        next_minute_ms = max(100, math.ceil(((minute + 1) * 60 - now) * 1000))
        if limits.tpm is not None:
            found = await self._read(_key("tpm", tenant, minute))
            if found is not None and found[0] >= limits.tpm:
                message = f"tenant {tenant!r} is at its tpm limit ({limits.tpm} tokens per minute)"
                return Refusal("tpm", next_minute_ms, f"{message}, across routers")
        if limits.rpm is None:
            return None
        if not await self._add(_key("rpm", tenant, minute), 1, ceiling=limits.rpm):
            message = f"tenant {tenant!r} is at its rpm limit ({limits.rpm} requests per minute)"
            return Refusal("rpm", next_minute_ms, f"{message}, across routers")
        return None

    def used(self, tenant: str, tokens: int) -> None:
        """Add the tokens an answer used to the tenant's minute (in the background: the
        answer does not wait for it)."""
        if tokens > 0:
            minute = int(self._wall_clock() // 60)
            self._ask(_key("tpm", tenant, minute), tokens, None, None)

    async def stop(self) -> None:
        """Idempotent: writes under way finish (a bounded wait)."""
        writing = {counter.writing for counter in self._counters.values() if counter.writing}
        if writing:
            await asyncio.wait(writing, timeout=2.0)
        for task in writing:
            task.cancel()

    # --- writing ---------------------------------------------------------------------------

    async def _add(self, key: str, amount: int, *, ceiling: int | None) -> bool:
        """Add `amount` unless that would pass `ceiling`; False: it would have."""
        asked: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ask(key, amount, ceiling, asked)
        return await asked

    def _ask(
        self, key: str, amount: int, ceiling: int | None, asked: asyncio.Future[bool] | None
    ) -> None:
        minute = int(key.rsplit(".", 1)[1])
        if minute != self._minute:  # the minutes before are done with
            self._minute = minute
            for old in [k for k, c in self._counters.items() if c.writing is None]:
                self._counters.pop(old)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = _Counter()
        counter.asking.append((amount, ceiling, asked))
        if counter.writing is None:
            counter.writing = asyncio.create_task(self._write_while_asked(key, counter))

    async def _write_while_asked(self, key: str, counter: _Counter) -> None:
        """One write at a time per key: what asks meanwhile goes in the next one."""
        try:
            while counter.asking:
                asking = [add for add in counter.asking if add[2] is None or not add[2].done()]
                counter.asking = []
                added = [(amount, ceiling) for amount, ceiling, _ in asking]
                try:
                    granted = await self._write(key, counter, added)
                except Exception:  # a bug must not leave calls waiting for ever
                    log.exception("shared limit %s: write failed; admitted", key)
                    granted = [True] * len(added)
                for (_, _, asked), fits in zip(asking, granted, strict=True):
                    if asked is not None and not asked.done():
                        asked.set_result(fits)
        finally:
            counter.writing = None

    async def _write(
        self, key: str, counter: _Counter, adds: list[tuple[int, int | None]]
    ) -> list[bool]:
        """Add what fits under its ceiling, from the value last read or written; which
        adds fit. A refusal is only ever decided on a value just read."""
        for _ in range(_RACES):
            fresh = counter.known is None
            if counter.known is None:
                counter.known = await self._read(key)
                if counter.known is None:
                    return [True] * len(adds)  # unreachable: admitted
            value, revision = counter.known
            granted = fits_under(value, adds)
            if not all(granted) and not fresh:
                counter.known = None  # read again before saying no
                continue
            total = value + sum(
                amount for (amount, _), fits in zip(adds, granted, strict=True) if fits
            )
            if total == value:
                return granted
            written = await self._put(key, total, revision)
            if written is None:
                counter.known = None
                return [True] * len(adds)
            if written == 0:  # another router counted first
                counter.known = None
                continue
            counter.known = total, written
            return granted
        log.warning("shared limit %s: too many racing routers; admitted uncounted", key)
        return [True] * len(adds)

    # --- the store -------------------------------------------------------------------------

    async def _read(self, key: str) -> tuple[int, int] | None:
        """(value, revision); (0, 0) for a counter nobody wrote; None: unreachable."""
        read = await self._store.read(key)
        if read is None:
            return None
        data, revision = read
        try:
            value = int(data or b"0")
        except ValueError:
            value = 0
        return value, revision

    async def _put(self, key: str, value: int, revision: int) -> int | None:
        """The new revision; 0: another router wrote first; None: unreachable."""
        return await self._store.put(key, str(value).encode(), revision)


def fits_under(value: int, adds: list[tuple[int, int | None]]) -> list[bool]:
    """Which adds, in order, keep the counter within their ceiling (None: no ceiling)."""
    fits: list[bool] = []
    for amount, ceiling in adds:
        ok = ceiling is None or value + amount <= ceiling
        fits.append(ok)
        value += amount if ok else 0
    return fits


def _key(limit: str, tenant: str, minute: int) -> str:
    """KV keys allow few characters: the tenant's name goes hex-encoded."""
    return f"{limit}.{tenant.encode().hex()}.{minute}"
