"""Tenants' running calls counted across every router, for `max_concurrent` with
`limits.shared`: leases in JetStream KV, one key per tenant.

The key `running.<tenant>` holds what each router holds of that tenant:
`{"<router id>": [calls running, lease end (unix s), seq]}`. A router starts a call of a
tenant by a compare-and-set write (`kv.update` at the revision read) of its own holding
plus one, made only when every router's holding whose lease has not run out leaves room
under `max_concurrent`: of two routers racing for a tenant's last slot exactly one gets
it. The call's end writes the holding minus one. Each router rewrites its holdings every
third of `limits.lease_s`; one that dies stops, and what it held stops counting once its
lease has run out, so a crashed router cannot keep a tenant's slots for longer than that.

Why leases per router in one key per tenant: a plain counter would keep a crashed
router's calls counted for ever; a key per router would have to be listed (a consumer)
on every start. One key costs a start one read and one write, an end the same.

Routers hear each other's writes on the keys' own subjects (a plain subscription to
`$KV.<bucket>.running.>`), and the line reads what the others hold from what it heard
(`elsewhere`, no I/O): a tenant at its limit across routers waits in line, and a holding
that drops wakes the line at once. What was heard is checked by the compare-and-set
when a call starts; a start the store refuses goes back to the head of its line.

The leases are wall-clock (routers' clocks kept in sync, NTP). Availability first: a store
that cannot be read or written admits the call (said in the log, once per outage) and
this router counts it as its own, so the next write of its holding carries it.
Every NATS error is translated here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

__all__ = [
    "Holding",
    "SharedRunning",
    "decode_holdings",
    "encode_holdings",
    "held_elsewhere",
    "merge_heard",
    "with_holding",
]

log = logging.getLogger("inferbus.router.limits")

_RACES = 16  # compare-and-set retries before a start is admitted anyway
PREFIX = "running"

Holdings = dict[str, "Holding"]


@dataclass(frozen=True)
class Holding:
    """What one router holds of a tenant: its running calls, until `lease_end` (unix s);
    `seq` orders one router's writes."""

    running: int
    lease_end: float
    seq: int


def decode_holdings(data: bytes | None) -> Holdings:
    """A key's value; anything unreadable is nothing held (a store is not trusted to
    block a tenant)."""
    try:
        raw = json.loads(data or b"{}")
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    holdings: Holdings = {}
    for router, value in raw.items():
        try:
            running, lease_end, seq = value
            holdings[str(router)] = Holding(int(running), float(lease_end), int(seq))
        except (TypeError, ValueError):
            continue
    return holdings


def encode_holdings(holdings: Holdings) -> bytes:
    body = {router: [h.running, round(h.lease_end, 3), h.seq] for router, h in holdings.items()}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def held_elsewhere(holdings: Holdings, me: str, now: float) -> int:
    """Calls the other routers hold under a lease that has not run out at `now`."""
    return sum(
        max(0, h.running) for router, h in holdings.items() if router != me and h.lease_end > now
    )


def with_holding(holdings: Holdings, me: str, mine: Holding, now: float) -> Holdings:
    """The value to write: this router's holding replaced, leases run out dropped."""
    kept = {router: h for router, h in holdings.items() if router != me and h.lease_end > now}
    return kept | {me: mine}


def merge_heard(
    heard: Holdings, incoming: Holdings, now: float, *, only_lower: bool = False
) -> Holdings:
    """What is known of a key, with a value read or heard: per router the later write (by
    its `seq`) wins, so a write heard late never undoes a newer one; leases run out are
    dropped. `only_lower`: a value heard on the key's subject, which may be a write the
    store refused (a lost compare-and-set is delivered to subscribers all the same): it
    may lower what a router holds, never raise it — what a router takes is learnt by
    reading the key."""
    merged = dict(heard)
    for router, holding in incoming.items():
        known = merged.get(router)
        if known is not None and holding.seq < known.seq:
            continue
        if only_lower and (known is None or holding.running > known.running):
            continue
        merged[router] = holding
    return {router: h for router, h in merged.items() if h.lease_end > now}


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
        self._kv = kv
        self._connected = connected
        self._lease_s = lease_s
        self._wall_clock = wall_clock
        self._on_change = on_change
        self.router_id = router_id or uuid.uuid4().hex[:16]
        self._held: Counter[str] = Counter()  # this router's calls per tenant
        self._heard: dict[str, Holdings] = {}  # per tenant, every router's holding heard
        self._seq = 0
        self._writes: set[asyncio.Task[None]] = set()
        self._renewing: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._unavailable = False

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
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=2.0)
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
        try:
            return await self._take(tenant, limit)
        except asyncio.CancelledError:
            self._write_later(tenant)  # a write may have landed: the store gets ours again
            raise

    async def _take(self, tenant: str, limit: int | None) -> bool:
        key = _key(tenant)
        for _ in range(_RACES):
            found = await self._read(key)
            if found is None:
                break  # unreachable: admitted, counted here
            holdings, revision = found
            now = self._wall_clock()
            self._hear(tenant, holdings, now)
            want = self._held[tenant] + 1
            if limit is not None and held_elsewhere(holdings, self.router_id, now) + want > limit:
                return False
            written = await self._write(key, holdings, revision, want, now)
            if written is None:
                break
            if written:
                self._held[tenant] += 1
                return True
        else:
            log.warning("shared max_concurrent of %r: too many racing routers; admitted", tenant)
        self._held[tenant] += 1
        return True

    def give_back(self, tenant: str) -> None:
        """One call of `tenant` taken here has ended: written in the background."""
        self._held[tenant] -= 1
        if self._held[tenant] <= 0:
            del self._held[tenant]
        self._write_later(tenant)

    def _write_later(self, tenant: str) -> None:
        task = asyncio.create_task(self._write_mine(tenant))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # --- the store -----------------------------------------------------------------------

    async def _write_mine(self, tenant: str) -> None:
        """Write this router's holding of `tenant` as it is now, with a fresh lease."""
        key = _key(tenant)
        for _ in range(_RACES):
            found = await self._read(key)
            if found is None:
                return
            holdings, revision = found
            now = self._wall_clock()
            self._hear(tenant, holdings, now)
            if await self._write(key, holdings, revision, self._held[tenant], now) is not False:
                return

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            for tenant in list(self._held):
                await self._write_mine(tenant)
            self._on_change()  # leases of other routers may have run out

    async def _read(self, key: str) -> tuple[Holdings, int] | None:
        """(holdings, revision): ({}, 0) for a key nobody wrote; None: unreachable."""
        if not self._connected():
            self._lost(ConnectionError("not connected to NATS"))
            return None
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return {}, 0
        except (nats.errors.Error, OSError, TimeoutError) as error:
            self._lost(error)
            return None
        self._unavailable = False
        return decode_holdings(entry.value), entry.revision or 0

    async def _write(
        self, key: str, holdings: Holdings, revision: int, running: int, now: float
    ) -> bool | None:
        """True: written; False: another router wrote first; None: unreachable."""
        self._seq += 1
        mine = Holding(running, now + self._lease_s, self._seq)
        data = encode_holdings(with_holding(holdings, self.router_id, mine, now))
        try:
            if revision == 0:
                await self._kv.create(key, data)
            else:
                await self._kv.update(key, data, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except (nats.errors.Error, OSError, TimeoutError) as error:
            self._lost(error)
            return None
        return True

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

    def _lost(self, error: BaseException) -> None:
        if not self._unavailable:
            log.warning(
                "shared max_concurrent store unavailable (%s): admitting", type(error).__name__
            )
        self._unavailable = True


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
