"""The fleet index: per served model, the fresh nodes that serve it, kept up to date per record.

Pure and clock-free (every call takes `now`, the router's monotonic seconds). The fleet view
feeds it records; selection reads it. Costs, checked by the tests' reference comparison and
printed by `ops/bench/fleet_bench.py`:

- `take(record, now)` is O(size of that record): a record whose models are unchanged (only
  `seq`/`ts`/load differ) updates load and freshness only; otherwise the node's models are
  diffed against its previous record and only the differences touch the index.
- `sweep(now)` pops a heap of expiry times holding one entry per node (a record pushes
  none when it only moves the node's expiry later: the entry, once due, is pushed again at
  the node's newest expiry): O(log N) per node and ttl, not per record. A node past its
  ttl but not yet swept is never selectable: `live(node, now)` is checked per candidate.
- Selection reads `groups_of(types)` (one `ModelGroup` per (name, type): O(catalog), not
  O(fleet)) and samples nodes from a group's buckets (`NodeSet`: O(1) add, remove and random
  pick).

Why this structure (measured with `ops/bench/fleet_bench.py`): buckets by what selection ranks
on (running, size; the local node kept apart) make "the best candidate" a walk over a few
dozen buckets and a random sample inside the best one, instead of a sort of every candidate;
a dict + list per bucket gives O(1) membership changes and uniform sampling. A sorted
container of all candidates (by rank and load) was the alternative: load changes on every
job and heartbeat would each cost O(log N) re-inserts, for no gain when ties are spread
randomly anyway.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum

from router.fleet.candidates import Candidate
from router.fleet.nodeset import NodeSet
from services.capabilities import Capabilities, Load, ModelType, ServedModel
from services.wire import SLOT_KINDS, slot_kind

__all__ = ["BucketKey", "FleetIndex", "ModelGroup", "NodeEntry", "Taken"]

BucketKey = tuple[bool, float]  # (running, size_gb): what ranks a model on a node


class Taken(Enum):
    """What `take` did with a record (the fleet view logs refusals once)."""

    NEW = "new"
    CHANGED = "changed"
    LOAD_ONLY = "load_only"
    REVIVED = "revived"
    OUT_OF_ORDER = "out_of_order"  # an older seq of the same worker run
    TOO_MANY_MODELS = "too_many_models"
    FLEET_FULL = "fleet_full"

    @property
    def refused(self) -> bool:
        return self in (Taken.TOO_MANY_MODELS, Taken.FLEET_FULL)


@dataclass
class ModelGroup:
    """One (model name, type) and the fresh nodes serving it, bucketed by rank."""

    name: str
    type: ModelType
    buckets: dict[BucketKey, NodeSet] = field(default_factory=dict)  # never the local node
    local: BucketKey | None = None  # the local node's bucket, when it serves this model
    unsaturated: NodeSet = field(default_factory=NodeSet)  # every member with a free slot
    size: int = 0

    @property
    def kind(self) -> str:
        return slot_kind(self.type)


@dataclass
class NodeEntry:
    record: Capabilities
    received_s: float  # the router's own clock; a sender's `ts` is display only
    models: dict[tuple[str, ModelType], ServedModel]
    fresh: bool = True  # indexed into groups (cleared by `sweep` after the ttl)
    # The node's models by slot kind, and each kind's saturation as last applied to the
    # groups: a load-only record touches only the groups of a kind whose saturation moved.
    by_kind: dict[str, tuple[tuple[str, ModelType], ...]] = field(default_factory=dict)
    saturated: dict[str, bool] = field(default_factory=dict)
    due_s: float | None = None  # when the node's one live entry in the expiry heap is due

    def models_changed(self) -> None:
        kinds: dict[str, list[tuple[str, ModelType]]] = {}
        for key in self.models:
            kinds.setdefault(slot_kind(key[1]), []).append(key)
        self.by_kind = {kind: tuple(keys) for kind, keys in kinds.items()}
        self.saturated = {}

    @property
    def stale_at(self) -> float:
        return self.received_s + self.record.ttl_s

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.received_s)

    def stale(self, now: float) -> bool:
        return now > self.stale_at


def _bucket(model: ServedModel) -> BucketKey:
    return (bool(model.running), model.size_gb or 0.0)


class FleetIndex:
    """Every node's newest record, and per model the fresh nodes serving it (see module doc)."""

    def __init__(
        self,
        *,
        local_node: str | None = None,
        drop_after_ttls: float = 10,
        max_nodes: int = 10_000,
        max_models_per_node: int = 512,
    ) -> None:
        self.local_node = local_node
        self._drop_after_ttls = drop_after_ttls
        self._max_nodes = max_nodes
        self._max_models = max_models_per_node
        self.nodes: dict[str, NodeEntry] = {}
        self.node_ids: list[str] = []  # sorted, for paging `/nodes`
        self.router_inflight: Counter[tuple[str, str]] = Counter()
        # The router's own starts minus its own ends on a (node, kind) since that node's
        # last record: a slot freed by an answer counts at once, not at the next record.
        self._since_record: dict[tuple[str, str], int] = {}
        self.version = 0  # bumped when groups or buckets appear or vanish (caches key on it)
        self.membership = 0  # bumped when any group gains or loses a node (for `/v1/models`)
        self.running_changes = 0  # bumped when a record's `running_models` change (`/api/ps`)
        self.slot_cache: dict[object, object] = {}  # selection's orderings, per `version`
        self._groups: dict[tuple[str, ModelType], ModelGroup] = {}
        self._by_type: dict[str, dict[str, ModelGroup]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._forget_listeners: list[Callable[[str], None]] = []
        self._stale_listeners: list[Callable[[str], None]] = []

    # --- intake ---------------------------------------------------------------------------

    def take(self, record: Capabilities, now: float) -> Taken:
        """Index one record: O(size of the record)."""
        node = record.node_id
        known = self.nodes.get(node)
        if len(record.served_models) > self._max_models:
            return Taken.TOO_MANY_MODELS
        if known is None and len(self.nodes) >= self._max_nodes:
            return Taken.FLEET_FULL
        if known is not None and _out_of_order(known.record, record):
            return Taken.OUT_OF_ORDER
        if known is None or known.record.running_models != record.running_models:
            self.running_changes += 1
        if known is not None and known.fresh and _same_models(known.record, record):
            outcome = Taken.LOAD_ONLY  # the cheap path: a heartbeat, a slot taken or freed
            entry = known
            entry.record, entry.received_s = record, now
        else:
            models = {(m.name, m.type): m for m in record.served_models}
            if known is None:
                outcome = Taken.NEW
                bisect.insort(self.node_ids, node)
                entry = NodeEntry(record, now, models)
                self.nodes[node] = entry
                self._index_models(node, models, {})
            elif not known.fresh:
                outcome = Taken.REVIVED
                entry = known
                entry.record, entry.received_s, entry.fresh = record, now, True
                entry.models = models
                self._index_models(node, models, {})
            else:
                outcome = Taken.CHANGED
                entry = known
                previous = known.models
                entry.record, entry.received_s, entry.models = record, now, models
                self._index_models(node, models, previous)
            entry.models_changed()
        for kind in SLOT_KINDS:
            self._since_record.pop((node, kind), None)
            self._refresh_saturation(node, kind)
        stale_at = entry.stale_at
        if entry.due_s is None or stale_at < entry.due_s:
            self._schedule(node, entry, stale_at)
        return outcome

    def sweep(self, now: float) -> list[str]:
        """Unindex nodes past their ttl and forget those silent long enough; the forgotten."""
        forgotten: list[str] = []
        while self._expiries and self._expiries[0][0] < now:
            due, node = heapq.heappop(self._expiries)
            entry = self.nodes.get(node)
            if entry is None or due != entry.due_s:
                continue  # a forgotten node's, or one a shorter ttl brought forward
            if entry.fresh and entry.stale(now):
                self._unindex_node(node, entry)
                entry.fresh = False
                self._schedule(node, entry, self._forget_at(entry))
                for listener in self._stale_listeners:
                    listener(node)
            elif entry.fresh:
                self._schedule(node, entry, entry.stale_at)  # records came meanwhile
            elif now > self._forget_at(entry):
                self._forget(node)
                forgotten.append(node)
            else:
                self._schedule(node, entry, self._forget_at(entry))
        return forgotten

    def _schedule(self, node: str, entry: NodeEntry, due_s: float) -> None:
        entry.due_s = due_s
        heapq.heappush(self._expiries, (due_s, node))

    def _forget_at(self, entry: NodeEntry) -> float:
        return entry.received_s + entry.record.ttl_s * self._drop_after_ttls

    def on_forget(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node)` when a node is forgotten (breakers drop its state)."""
        self._forget_listeners.append(listener)

    def on_stale(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node)` when a sweep finds a node past its ttl (the live page)."""
        self._stale_listeners.append(listener)

    def _forget(self, node: str) -> None:
        del self.nodes[node]
        where = bisect.bisect_left(self.node_ids, node)
        if where < len(self.node_ids) and self.node_ids[where] == node:
            del self.node_ids[where]
        for kind in SLOT_KINDS:
            self.router_inflight.pop((node, kind), None)
            self._since_record.pop((node, kind), None)
        for listener in self._forget_listeners:
            listener(node)

    # --- the router's own work in flight --------------------------------------------------

    def job_started(self, node: str, kind: str) -> None:
        self.router_inflight[node, kind] += 1
        self._since_record[node, kind] = self._since_record.get((node, kind), 0) + 1
        self._refresh_saturation(node, kind)

    def job_ended(self, node: str, kind: str) -> None:
        key = (node, kind)
        count = self.router_inflight.get(key, 0)
        if count <= 1:
            self.router_inflight.pop(key, None)
        else:
            self.router_inflight[key] = count - 1
        self._since_record[key] = self._since_record.get(key, 0) - 1
        self._refresh_saturation(node, kind)

    def heard_busy(self, node: str, kind: str) -> None:
        """The node answered BUSY: it is full until its next record or an answer of ours."""
        entry = self.nodes.get(node)
        reported = entry.record.load.get(kind) if entry is not None else None
        if reported is None:
            return
        self._since_record[node, kind] = reported.capacity - reported.inflight
        self._refresh_saturation(node, kind)

    # --- reads for selection ----------------------------------------------------------------

    def live(self, node: str, now: float) -> bool:
        entry = self.nodes.get(node)
        return entry is not None and entry.fresh and not entry.stale(now)

    def load(self, node: str, kind: str) -> tuple[int, int]:
        """(inflight, capacity): the record's count moved by the router's own starts and
        ends since that record, and never less than the router's own count."""
        entry = self.nodes.get(node)
        reported = entry.record.load.get(kind) if entry is not None else None
        own = self.router_inflight.get((node, kind), 0)
        if reported is None:
            return own, 1
        since = self._since_record.get((node, kind), 0)
        return max(reported.inflight + since, own, 0), reported.capacity

    def load_ratio(self, node: str, kind: str) -> float:
        inflight, capacity = self.load(node, kind)
        return inflight / capacity if capacity > 0 else 1.0

    def groups_of(self, types: Sequence[str]) -> list[ModelGroup]:
        return [group for t in types for group in self._by_type.get(t, {}).values()]

    def group(self, name: str, model_type: str) -> ModelGroup | None:
        return self._by_type.get(model_type, {}).get(name)

    def type_of(self, name: str) -> ModelType | None:
        """The type the fleet's runtimes give a model name (vision, llm, ...), if served."""
        for model_type in ("vision", "llm", "code", "embed"):
            group = self._by_type.get(model_type, {}).get(name)
            if group is not None and group.size:
                return group.type
        return None

    def candidate(self, group: ModelGroup, node: str, now: float) -> Candidate:
        entry = self.nodes[node]
        model = entry.models[group.name, group.type]
        inflight, capacity = self.load(node, group.kind)
        return Candidate(
            name=model.name,
            type=model.type,
            node=node,
            local=node == self.local_node,
            node_age_s=round(entry.age_s(now), 3),
            runtime=model.runtime,
            running=model.running,
            size_gb=model.size_gb,
            inflight=inflight,
            capacity=capacity,
        )

    def members(self, group: ModelGroup) -> Iterator[str]:
        """Every node of a group, the local one included."""
        if group.local is not None and self.local_node is not None:
            yield self.local_node
        for bucket in group.buckets.values():
            yield from bucket

    def serves_anything(self) -> bool:
        """Whether some fresh node serves some model (as of the last sweep)."""
        return bool(self._groups)

    def groups(self) -> Iterator[ModelGroup]:
        """Every served (model, type) with at least one fresh node."""
        return iter(self._groups.values())

    # --- index maintenance ----------------------------------------------------------------

    def _index_models(
        self,
        node: str,
        models: dict[tuple[str, ModelType], ServedModel],
        previous: dict[tuple[str, ModelType], ServedModel],
    ) -> None:
        for key, model in previous.items():
            if models.get(key) != model:
                self._remove_member(node, key, model)
        for key, model in models.items():
            if previous.get(key) != model:
                self._add_member(node, key, model)

    def _unindex_node(self, node: str, entry: NodeEntry) -> None:
        for key, model in entry.models.items():
            self._remove_member(node, key, model)

    def _add_member(self, node: str, key: tuple[str, ModelType], model: ServedModel) -> None:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = ModelGroup(model.name, model.type)
            self._by_type.setdefault(model.type, {})[model.name] = group
            self.version += 1
        bucket_key = _bucket(model)
        if node == self.local_node:
            group.local = bucket_key
            self.version += 1
        else:
            bucket = group.buckets.get(bucket_key)
            if bucket is None:
                bucket = group.buckets[bucket_key] = NodeSet()
                self.version += 1
            bucket.add(node)
        group.size += 1
        self.membership += 1
        if not self._saturated(node, group.kind):
            group.unsaturated.add(node)

    def _remove_member(self, node: str, key: tuple[str, ModelType], model: ServedModel) -> None:
        group = self._groups.get(key)
        if group is None:
            return
        bucket_key = _bucket(model)
        if node == self.local_node:
            if group.local is None:
                return
            group.local = None
            self.version += 1
        else:
            bucket = group.buckets.get(bucket_key)
            if bucket is None or node not in bucket:
                return
            bucket.discard(node)
            if not bucket:
                del group.buckets[bucket_key]
                self.version += 1
        group.size -= 1
        self.membership += 1
        group.unsaturated.discard(node)
        if not group.size:
            del self._groups[key]
            del self._by_type[model.type][model.name]
            self.version += 1

    def _saturated(self, node: str, kind: str) -> bool:
        inflight, capacity = self.load(node, kind)
        return inflight >= capacity

    def _refresh_saturation(self, node: str, kind: str) -> None:
        """Keep each group's `unsaturated` set right after a load change: nothing when the
        kind's saturation did not move, else O(node's models of that kind)."""
        entry = self.nodes.get(node)
        if entry is None or not entry.fresh:
            return
        keys = entry.by_kind.get(kind)
        if not keys:
            return
        saturated = self._saturated(node, kind)
        if entry.saturated.get(kind) is saturated:
            return
        entry.saturated[kind] = saturated
        for key in keys:
            group = self._groups.get(key)
            if group is None:
                continue
            if saturated:
                group.unsaturated.discard(node)
            else:
                group.unsaturated.add(node)

    @classmethod
    def of_candidates(cls, candidates: Sequence[Candidate], now: float = 0.0) -> FleetIndex:
        """An index holding exactly `candidates` (selection's table tests, the reference)."""
        local = next((c.node for c in candidates if c.local), None)
        index = cls(local_node=local)
        by_node: dict[str, list[Candidate]] = {}
        for c in candidates:
            by_node.setdefault(c.node, []).append(c)
        for node, held in by_node.items():
            load = {slot_kind(c.type): Load(inflight=c.inflight, capacity=c.capacity) for c in held}
            record = Capabilities(
                node_id=node,
                version="index",
                seq=1,
                ts=0.0,
                ttl_s=3600.0,  # the longest a record may say; these never age
                served_models=tuple(
                    ServedModel(
                        name=c.name,
                        type=c.type,
                        runtime=c.runtime,
                        running=c.running,
                        size_gb=c.size_gb,
                    )
                    for c in held
                ),
                load=load,
            )
            index.take(record, now - held[0].node_age_s)
        return index


def _same_models(known: Capabilities, record: Capabilities) -> bool:
    """The same served models (the record decoder reuses the tuple when they are)."""
    return (
        known.served_models is record.served_models or known.served_models == record.served_models
    )


def _out_of_order(known: Capabilities, record: Capabilities) -> bool:
    """An older record of the same worker process (by `seq`, per `instance`).

    A new `instance` is a restarted worker (its `seq` starts again at 1), taken at once.
    Records without one (older workers) are taken in arrival order: NATS keeps one
    publisher's messages in order.
    """
    if not record.instance or record.instance != known.instance:
        return False
    return record.seq <= known.seq
