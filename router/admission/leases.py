"""Leases of running calls, as the shared `max_concurrent` keeps them in one KV value per
tenant: `{"<router id>": [calls running, lease end (unix s), seq]}` — and what a router
decides from them. Pure: values and the wall clock passed in
(router/admission/shared_running.py is the store's edge).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Holding",
    "Holdings",
    "decode_holdings",
    "encode_holdings",
    "grant",
    "held_elsewhere",
    "merge_heard",
    "with_holding",
]

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


def grant(limits: Sequence[int | None], elsewhere: int, mine: int) -> list[bool]:
    """Which of the calls asking at once may start, in order, when the other routers hold
    `elsewhere` and this one `mine`: each while the sum stays within its `limit` (None:
    counted whatever the sum)."""
    granted: list[bool] = []
    taken = 0
    for limit in limits:
        fits = limit is None or elsewhere + mine + taken + 1 <= limit
        granted.append(fits)
        taken += fits
    return granted
