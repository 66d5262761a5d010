"""A set of node ids with O(1) add, remove, membership and uniform random choice.

The fleet index keeps one per rank bucket of a served model; selection samples from them
(power of two choices), which a plain `set` cannot do in O(1).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["NodeSet"]


class NodeSet:
    """Node ids with O(1) add, remove, membership and uniform random choice."""

    __slots__ = ("_items", "_where")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._where: dict[str, int] = {}

    def add(self, node: str) -> None:
        if node not in self._where:
            self._where[node] = len(self._items)
            self._items.append(node)

    def discard(self, node: str) -> None:
        where = self._where.pop(node, None)
        if where is None:
            return
        last = self._items.pop()
        if where < len(self._items):
            self._items[where] = last
            self._where[last] = where

    def __contains__(self, node: object) -> bool:
        return node in self._where

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def at(self, index: int) -> str:
        return self._items[index]

    def choice(self, rng: random.Random) -> str:
        return self._items[rng.randrange(len(self._items))]
