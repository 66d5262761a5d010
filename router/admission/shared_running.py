"""Tenants' running calls counted across every router, for `max_concurrent` with
`limits.shared`: leases in JetStream KV, one key per tenant.

The key `running.<tenant>` holds what each router holds of that tenant
(router/admission/leases.py has the value and the arithmetic). A router starts a call of a
tenant by a compare-and-set write (`kv.update` at the revision read) of its own holding
plus one, made only when every router's holding whose lease has not run out leaves room
under `max_concurrent`: of two routers racing for a tenant's last slot exactly one gets
it. The call's end writes the holding minus one. Each router rewrites its holdings every
third of `limits.lease_s`; one that dies stops, and what it held stops counting once its
lease has run out, so a crashed router cannot keep a tenant's slots for longer than that.

Why leases per router in one key per tenant: a plain counter would keep a crashed
router's calls counted for ever; a key per router would have to be listed (a consumer)
on every start. One key costs a start one write (and a read when another router wrote
since), an end the same. A router writes a tenant's key one write at a time: calls that
start or end while a write is under way go together in the next one, so calls of one
router never race each other for the key.

Routers hear each other's writes on the keys' own subjects (a plain subscription to
`$KV.<bucket>.running.>`), and the line reads what the others hold from what it heard
(`elsewhere`, no I/O): a tenant at its limit across routers waits in line, and a holding
that drops wakes the line at once. What was heard is checked by the compare-and-set
when a call starts; a start the store refuses goes back to the head of its line.

The leases are wall-clock (routers' clocks kept in sync, NTP). Availability first: a store
that cannot be read or written admits the call (said in the log, once per outage) and
this router counts it as its own, so the next write of its holding carries it
(router/admission/limits_bucket.py translates the store's errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from router.admission.leases import (
    Holding,
    Holdings,
    decode_holdings,
    encode_holdings,
    grant,
    held_elsewhere,
    merge_heard,
    with_holding,
)
from router.admission.limits_bucket import LimitsBucket

__all__ = ["SharedRunning"]

log = logging.getLogger("inferbus.router.limits")

_RACES = 16  # compare-and-set retries before the calls asking are admitted anyway
PREFIX = "running"

_Ask = tuple[int | None, "asyncio.Future[bool]"]  # a call asking to start: its limit


@dataclass
class _Tenant:
    """This router's side of one tenant's key."""

    held: int = 0  # calls of the tenant this router counts as its own
    asking: list[_Ask] = field(default_factory=list)  # calls waiting for the next write
    dirty: bool = False  # `held` moved, or the lease wants renewing: a write is due
    known: tuple[Holdings, int] | None = None  # the value and revision last read or written
    writing: asyncio.Task[None] | None = None


class SharedRunning:
    """The KV edge of shared `max_concurrent` for one router; no method raises a NATS
    error (module doc)."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        lease_s: float,
        wall_clock: Callable[[], float],
        on_change: Callable[[], None],
        connected: Callable[[], bool] = lambda: True,
        router_id: str | None = None,
    ) -> None:
        """`on_change` hears that another router's holdings changed or may have run out
        (the line wakes on it); while not `connected` the store counts as unreachable at
        once (a request would wait for its timeout)."""
        self._store = LimitsBucket(kv, connected, "shared max_concurrent")
        self._lease_s = lease_s
        self._wall_clock = wall_clock
        self._on_change = on_change
        self.router_id = router_id or uuid.uuid4().hex[:16]
        self._tenants: dict[str, _Tenant] = {}
        self._heard: dict[str, Holdings] = {}  # per tenant, every router's holding heard
        self._seq = 0
        self._renewing: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    async def start(self, nc: NatsClient, bucket: str) -> None:
        """Hear other routers' writes and keep this router's leases renewed."""
        self._subscription = await nc.subscribe(f"$KV.{bucket}.{PREFIX}.>", cb=self._heard_write)
        self._renewing = asyncio.create_task(self._renew_forever())

    async def stop(self) -> None:
        """Idempotent: the renewals stop, writes under way finish (a bounded wait)."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(BaseException):
                await self._renewing
            self._renewing = None
        writing = {state.writing for state in self._tenants.values() if state.writing}
        if writing:
            await asyncio.wait(writing, timeout=2.0)
        for task in writing:
            task.cancel()
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    def elsewhere(self, tenant: str) -> int:
        """The tenant's calls the other routers hold, as last heard. O(routers)."""
        heard = self._heard.get(tenant)
        if not heard:
            return 0
        return held_elsewhere(heard, self.router_id, self._wall_clock())

    async def take(self, tenant: str, limit: int | None) -> bool:
        """Count one call of `tenant` as this router's; False: the routers together hold
        `limit` already (None: count it whatever they hold). True when the store cannot
        be reached (availability first)."""
        state = self._state(tenant)
        asked: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        state.asking.append((limit, asked))
        self._write_soon(tenant, state)
        try:
            return await asked
        except asyncio.CancelledError:
            if asked.done() and not asked.cancelled() and asked.result():
                self.give_back(tenant)  # counted in the instant its caller went
            raise

    def give_back(self, tenant: str) -> None:
        """One call of `tenant` taken here has ended: written in the background."""
        state = self._state(tenant)
        state.held = max(0, state.held - 1)
        state.dirty = True
        self._write_soon(tenant, state)

    # --- writing ---------------------------------------------------------------------------

    def _state(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant()
        return state

    def _write_soon(self, tenant: str, state: _Tenant) -> None:
        if state.writing is None:
            state.writing = asyncio.create_task(self._write_while_due(tenant, state))

    async def _write_while_due(self, tenant: str, state: _Tenant) -> None:
        """One write at a time per tenant: what asks meanwhile goes in the next one."""
        try:
            while state.asking or state.dirty:
                asking = [(limit, asked) for limit, asked in state.asking if not asked.done()]
                state.asking, state.dirty = [], False
                limits = [limit for limit, _ in asking]
                try:
                    granted = await self._write(tenant, state, limits)
                except Exception:  # a bug must not leave calls waiting for ever
                    log.exception("shared max_concurrent of %r: write failed; admitted", tenant)
                    state.held += len(limits)
                    granted = [True] * len(limits)
                for (_, asked), started in zip(asking, granted, strict=True):
                    if asked.cancelled():
                        if started:  # its caller went while the write was under way
                            state.held -= 1
                            state.dirty = True
                    else:
                        asked.set_result(started)
        finally:
            state.writing = None  # the state stays (one per tenant): its value is cached

    async def _write(self, tenant: str, state: _Tenant, limits: list[int | None]) -> list[bool]:
        """Write this router's holding with the calls asking that fit, and a fresh lease;
        which of them start. A refusal is only ever decided on a value just read."""
        key = _key(tenant)
        for _ in range(_RACES):
            fresh = state.known is None
            if state.known is None:
                state.known = await self._read(key)
                if state.known is None:  # unreachable: admitted, counted here
                    break
            holdings, revision = state.known
            now = self._wall_clock()
            if fresh:
                self._hear(tenant, holdings, now)
            mine = state.held
            granted = grant(limits, held_elsewhere(holdings, self.router_id, now), mine)
            if not all(granted) and not fresh:
                state.known = None  # read again before saying no
                continue
            self._seq += 1
            holding = Holding(mine + sum(granted), now + self._lease_s, self._seq)
            value = with_holding(holdings, self.router_id, holding, now)
            written = await self._put(key, value, revision)
            if written is None:
                state.known = None
                break
            if written == 0:  # another router wrote first
                state.known = None
                continue
            state.known = value, written
            state.held += sum(granted)
            if state.held != holding.running:  # calls ended during the write
                state.dirty = True
            return granted
        else:
            log.warning("shared max_concurrent of %r: too many racing routers; admitted", tenant)
        state.held += len(limits)
        return [True] * len(limits)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            for tenant, state in list(self._tenants.items()):
                if state.held > 0:
                    state.dirty = True
                    self._write_soon(tenant, state)
            self._on_change()  # leases of other routers may have run out

    # --- the store -------------------------------------------------------------------------

    async def _read(self, key: str) -> tuple[Holdings, int] | None:
        """(holdings, revision): ({}, 0) for a key nobody wrote; None: unreachable."""
        read = await self._store.read(key)
        if read is None:
            return None
        data, revision = read
        return decode_holdings(data), revision

    async def _put(self, key: str, holdings: Holdings, revision: int) -> int | None:
        """The new revision; 0: another router wrote first; None: unreachable."""
        return await self._store.put(key, encode_holdings(holdings), revision)

    async def _heard_write(self, msg: Msg) -> None:
        tenant = _tenant_of(msg.subject)
        if tenant is None:
            return
        holdings = decode_holdings(msg.data)
        before = self.elsewhere(tenant)
        self._hear(tenant, holdings, self._wall_clock(), only_lower=True)
        if self.elsewhere(tenant) < before:
            self._on_change()

    def _hear(
        self, tenant: str, holdings: Holdings, now: float, *, only_lower: bool = False
    ) -> None:
        merged = merge_heard(self._heard.get(tenant, {}), holdings, now, only_lower=only_lower)
        if merged:
            self._heard[tenant] = merged
        else:
            self._heard.pop(tenant, None)


def _key(tenant: str) -> str:
    """KV keys allow few characters: the tenant's name goes hex-encoded."""
    return f"{PREFIX}.{tenant.encode().hex()}"


def _tenant_of(subject: str) -> str | None:
    """The tenant a `$KV.<bucket>.running.<hex>` subject is about."""
    last = subject.rsplit(".", 1)[-1]
    try:
        return bytes.fromhex(last).decode()
    except ValueError:
        return None
