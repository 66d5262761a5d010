"""The best node for a set of served models, read from the fleet index, with load spread.

Selection (`router/selection/select.py`) decides *which models* may serve a request and how to rank
them; this module finds the node. Candidates are ranked by what their bucket says (running,
size, local; see `ModelGroup`), so the buckets are walked best rank first (an ordering
cached per index `version`) and only the first rank level with an eligible node is looked
into. Inside it, equals are chosen between by load:

- up to `SCAN_LIMIT` nodes: the least loaded (`inflight / capacity`), ties at random;
- more: power of two random choices — two eligible nodes drawn at random, the less loaded
  wins — O(1) per request whatever the fleet size, and it spreads a popular model's
  traffic across every node that serves it (ties are never broken by node id).

A node is eligible when it is live (within its ttl, by the router's clock), not excluded
(tried already, breaker open: a predicate, O(1) per node asked), local under
`force_local`, and unsaturated — unless no eligible node of the *same model* has a free
slot, in which case a saturated one still beats a worse model (DESIGN §6).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.fleet.candidates import Candidate
from router.fleet.index import BucketKey, FleetIndex, ModelGroup
from router.fleet.nodeset import NodeSet

__all__ = ["SCAN_LIMIT", "Picker", "Rank", "RankOf"]

SCAN_LIMIT = 16  # a level this small is scanned for its least loaded node
_DRAWS = 32  # random draws for two eligible nodes before a level is scanned instead
_PROBES = 4  # random probes for a free slot in a model before its free nodes are scanned
_CACHE_LIMIT = 256

Rank = tuple[bool | float, ...]
RankOf = Callable[[ModelGroup, BucketKey, bool], Rank]  # group, bucket, local


@dataclass(frozen=True)
class _Slot:
    group: ModelGroup
    bucket: BucketKey
    local: bool

    def size(self, index: FleetIndex) -> int:
        if self.local:
            return 1
        return len(self.group.buckets.get(self.bucket, ()))

    def node(self, index: FleetIndex, at: int) -> str:
        if self.local:
            assert index.local_node is not None
            return index.local_node
        return self.group.buckets[self.bucket].at(at)


class Picker:
    """One selection's reads of the index: `now`, exclusions and the RNG fixed."""

    def __init__(
        self,
        index: FleetIndex,
        *,
        now: float,
        excluded: Callable[[str], bool],
        force_local: bool,
        rng: random.Random,
        fits: Callable[[ModelGroup, str], bool] | None = None,
    ) -> None:
        self.index = index
        self.now = now
        self._excluded = excluded
        self._fits = fits
        self.force_local = force_local
        self._rng = rng
        self._free: dict[int, bool] = {}  # id(group) → has an eligible unsaturated node

    def pick(self, groups: Sequence[ModelGroup], rank: RankOf, key: object) -> Candidate | None:
        """The best eligible candidate among `groups` by `rank`, load spread among equals."""
        for level in self._levels(groups, rank, key):
            if self.force_local:
                level = [slot for slot in level if slot.local]
            found = self._pick_in(level)
            if found is not None:
                group, node = found
                return self.index.candidate(group, node, self.now)
        return None

    def open_node(self, node: str) -> bool:
        """Live and not excluded (ignores load and `force_local`)."""
        return self.index.live(node, self.now) and not self._excluded(node)

    def _levels(self, groups: Sequence[ModelGroup], rank: RankOf, key: object) -> list[list[_Slot]]:
        cache = self.index.slot_cache
        cached = cache.get(key)
        if isinstance(cached, tuple) and cached[0] == self.index.version:
            levels: list[list[_Slot]] = cached[1]
            return levels
        ranked: list[tuple[Rank, _Slot]] = []
        for group in groups:
            if group.local is not None:
                ranked.append((rank(group, group.local, True), _Slot(group, group.local, True)))
            for bucket in group.buckets:
                ranked.append((rank(group, bucket, False), _Slot(group, bucket, False)))
        ranked.sort(key=lambda pair: pair[0])
        levels = []
        previous: Rank | None = None
        for slot_rank, slot in ranked:
            if slot_rank != previous:
                levels.append([])
                previous = slot_rank
            levels[-1].append(slot)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = (self.index.version, levels)
        return levels

    def fits(self, group: ModelGroup, node: str) -> bool:
        """Open, and its copy of the model can take this job (capabilities, wire features)."""
        return self.open_node(node) and (self._fits is None or self._fits(group, node))

    def _eligible(self, group: ModelGroup, node: str) -> bool:
        if not self.fits(group, node):
            return False
        return node in group.unsaturated or not self._has_free(group)

    def _has_free(self, group: ModelGroup) -> bool:
        """Whether an eligible node of this model has a free slot (memoised per pick)."""
        memo = self._free.get(id(group))
        if memo is None:
            memo = self._free[id(group)] = self._find_free(group, group.unsaturated)
        return memo

    def _find_free(self, group: ModelGroup, free: NodeSet) -> bool:
        local = self.index.local_node
        if self.force_local:
            return local is not None and local in free and self.fits(group, local)
        if not free:
            return False
        for _ in range(_PROBES):
            if self.fits(group, free.choice(self._rng)):
                return True
        return any(self.fits(group, node) for node in free)

    def _pick_in(self, level: Sequence[_Slot]) -> tuple[ModelGroup, str] | None:
        sizes = [slot.size(self.index) for slot in level]
        total = sum(sizes)
        if total == 0:
            return None
        if total == 1:  # one node of one model: nothing to spread over
            only = next(slot for slot, size in zip(level, sizes, strict=True) if size)
            pair = only.group, only.node(self.index, 0)
            return pair if self._eligible(*pair) else None
        if total > SCAN_LIMIT:
            drawn = self._draw_two(level, sizes, total)
            if drawn:
                return min(drawn, key=self._ratio)
        every = [
            (slot.group, node)
            for slot, size in zip(level, sizes, strict=True)
            for node in (slot.node(self.index, at) for at in range(size))
            if self._eligible(slot.group, node)
        ]
        if not every:
            return None
        least = min(self._ratio(pair) for pair in every)
        return self._rng.choice([pair for pair in every if self._ratio(pair) == least])

    def _draw_two(
        self, level: Sequence[_Slot], sizes: Sequence[int], total: int
    ) -> list[tuple[ModelGroup, str]]:
        drawn: list[tuple[ModelGroup, str]] = []
        for _ in range(_DRAWS):
            pair = self._at(level, sizes, self._rng.randrange(total))
            if pair not in drawn and self._eligible(*pair):
                drawn.append(pair)
                if len(drawn) == 2:
                    break
        return drawn

    def _at(self, level: Sequence[_Slot], sizes: Sequence[int], at: int) -> tuple[ModelGroup, str]:
        for slot, size in zip(level, sizes, strict=True):
            if at < size:
                return slot.group, slot.node(self.index, at)
            at -= size
        raise IndexError(at)

    def _ratio(self, pair: tuple[ModelGroup, str]) -> float:
        group, node = pair
        return self.index.load_ratio(node, group.kind)
