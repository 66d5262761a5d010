"""The order calls leave the line in: priority classes, fair shares, first come first served.

Pure: no clock, no I/O; the caller says which tenants may start now (`eligible`).

- **Between classes**, strict priority with an anti-starvation share: the highest class
  with a startable call goes first, but each lower class that waits earns
  `lower_class_share` of a start every time a higher one starts, and takes the next
  start once it holds a whole one. With 0.05 a waiting `batch` gets one start in 21
  while `interactive` keeps every slot busy; 0 makes priority strict.
- **Between tenants of one class**, deficit round robin over requests: each visit gives a
  tenant `weight / lightest weight waiting` credits, a start costs one. Requests, not
  estimated tokens: the queue hands out slots, and a slot is held by one request
  whatever its length; a token estimate before the answer is a guess (most chats send
  no `max_tokens`), while token volume is what `tpm` limits count, from real usage.
- **Within a tenant**, first in first out. A call that a worker answered BUSY comes back
  at the head of its tenant's line with its credit refunded (`push_front`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T", bound=Hashable)

_WHOLE = 1.0 - 1e-9  # a credit this close to one start is one (float sums of shares)


@dataclass
class _TenantLine(Generic[T]):
    weight: float
    calls: deque[T] = field(default_factory=deque)
    deficit: float = 0.0


class _ClassLine(Generic[T]):
    """One priority class: tenants in a ring, served by deficit round robin."""

    def __init__(self) -> None:
        self.tenants: dict[str, _TenantLine[T]] = {}
        self.ring: deque[str] = deque()  # tenants with waiting calls; ring[0] is visited
        self.visited = False  # ring[0] got its quantum in this visit
        self.lightest = 1.0
        self.size = 0

    def push(self, item: T, tenant: str, weight: float, *, front: bool) -> None:
        line = self.tenants.get(tenant)
        if line is None:
            line = self.tenants[tenant] = _TenantLine(weight)
        line.weight = weight
        if not line.calls:
            if front:
                self.ring.appendleft(tenant)
                self.visited = True
            else:
                self.ring.append(tenant)
            self._weights_changed()
        if front:
            line.calls.appendleft(item)
            line.deficit += 1.0  # its start was spent on a BUSY: refunded
        else:
            line.calls.append(item)
        self.size += 1

    def pop(self, eligible: Callable[[str], bool]) -> tuple[str, T] | None:
        skipped = 0
        passed_over = 0  # rotations past tenants that may not start
        visited = self.visited
        while self.ring and skipped < len(self.ring):
            tenant = self.ring[0]
            line = self.tenants[tenant]
            if not eligible(tenant):
                self._next()
                skipped += 1
                passed_over += 1
                continue
            if not self.visited:
                line.deficit += line.weight / self.lightest
                self.visited = True
            if line.deficit >= 1.0:
                line.deficit -= 1.0
                item = line.calls.popleft()
                self.size -= 1
                if not line.calls:
                    self._drop(tenant)
                return tenant, item
            self._next()
            skipped = 0
            passed_over = 0
            visited = False
        # Nobody could start: the ring stays where it was, so waiting costs no one its turn.
        self.ring.rotate(passed_over)
        self.visited = visited if self.ring else False
        return None

    def remove(self, item: T, tenant: str) -> bool:
        line = self.tenants.get(tenant)
        if line is None or item not in line.calls:
            return False
        line.calls.remove(item)
        self.size -= 1
        if not line.calls:
            self._drop(tenant)
        return True

    def _next(self) -> None:
        self.ring.rotate(-1)
        self.visited = False

    def _drop(self, tenant: str) -> None:
        """A tenant with nothing waiting leaves the ring and keeps no credit."""
        if self.ring and self.ring[0] == tenant:
            self.ring.popleft()
            self.visited = False
        else:
            self.ring.remove(tenant)
        del self.tenants[tenant]
        self._weights_changed()

    def _weights_changed(self) -> None:
        self.lightest = min((self.tenants[t].weight for t in self.ring), default=1.0)


class FairQueue(Generic[T]):
    """Calls waiting for one kind of slot, in the order they may start (module doc)."""

    def __init__(self, classes: Sequence[str], lower_class_share: float) -> None:
        self.classes = tuple(classes)
        self._share = lower_class_share
        self._lines: dict[str, _ClassLine[T]] = {name: _ClassLine() for name in self.classes}
        self._credit: dict[str, float] = dict.fromkeys(self.classes, 0.0)
        self._where: dict[T, tuple[str, str]] = {}  # item → (class, tenant)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, item: T) -> bool:
        return item in self._where

    def push(self, item: T, *, tenant: str, priority: str, weight: float = 1.0) -> None:
        """At the end of its tenant's line."""
        self._push(item, tenant, priority, weight, front=False)

    def push_front(self, item: T, *, tenant: str, priority: str, weight: float = 1.0) -> None:
        """Back at the head of its tenant's line, next of its class (a BUSY answer)."""
        self._push(item, tenant, priority, weight, front=True)

    def _push(self, item: T, tenant: str, priority: str, weight: float, *, front: bool) -> None:
        if item in self._where:
            raise ValueError("already waiting")
        priority = priority if priority in self._lines else self.classes[-1]
        self._lines[priority].push(item, tenant, weight, front=front)
        self._where[item] = (priority, tenant)

    def pop(self, eligible: Callable[[str], bool] = lambda tenant: True) -> T | None:
        """The next call to start, of a tenant `eligible` says may start; None: none."""
        for priority in self._preference():
            popped = self._lines[priority].pop(eligible)
            if popped is None:
                continue
            del self._where[popped[1]]
            self._served(priority)
            return popped[1]
        return None

    def remove(self, item: T) -> bool:
        """A call that left the line (its deadline, its client gone); False: not here."""
        where = self._where.pop(item, None)
        if where is None:
            return False
        priority, tenant = where
        self._lines[priority].remove(item, tenant)
        if not self._lines[priority].size:
            self._credit[priority] = 0.0
        return True

    def waiting(self) -> Iterator[tuple[T, str, str]]:
        """Every waiting call with its class and tenant, classes highest first."""
        for priority in self.classes:
            for tenant, line in self._lines[priority].tenants.items():
                for item in line.calls:
                    yield item, priority, tenant

    def _preference(self) -> list[str]:
        """Classes in the order to try: a lower class holding a whole start first, then
        highest first."""
        owed = [c for c in self.classes if self._credit[c] >= _WHOLE and self._lines[c].size]
        owed.sort(key=lambda c: -self._credit[c])
        return owed + [c for c in self.classes if c not in owed]

    def _served(self, priority: str) -> None:
        rank = self.classes.index(priority)
        if self._credit[priority] >= _WHOLE:
            self._credit[priority] = max(0.0, self._credit[priority] - 1.0)
        for lower in self.classes[rank + 1 :]:
            if self._lines[lower].size:
                self._credit[lower] = min(1.0, self._credit[lower] + self._share)
        if not self._lines[priority].size:
            self._credit[priority] = 0.0
