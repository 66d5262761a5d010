"""What `/v1/models` and `/nodes` show, read from the fleet index without dumping the fleet.

`/v1/models` is rebuilt only when the index's membership changes (a node joins, leaves or
changes its models; heartbeats do not), and cached as JSON bytes in between. `/nodes` is a
page: by node id (`?node=`), by model (`?model=`), fresh or stale (`?stale=true|false`),
`?limit=` records (default 100, at most 1,000) after the cursor `?after=<node id>`; the
answer's `next` is the cursor for the next page (null on the last one).
"""

from __future__ import annotations

import bisect
import heapq
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from router.fleet.index import FleetIndex
from services.wire import SLOT_KINDS

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "ModelsView",
    "NodesQuery",
    "nodes_page",
    "owners",
    "servers_of",
]

DEFAULT_PAGE = 100
MAX_PAGE = 1000
_OWNERS_SHOWN = 3  # node ids `/v1/models` names per model; the rest as a count


def servers_of(index: FleetIndex, name: str) -> set[str]:
    """The fresh nodes serving a model name, whatever type they give it."""
    return {node for group in index.groups() if group.name == name for node in index.members(group)}


def owners(index: FleetIndex) -> dict[str, tuple[int, list[str]]]:
    """Model name → (how many fresh nodes serve it, the first few by id).

    O(candidates): `ModelsView` caches it per index `membership` (which changes on joins,
    leaves and model changes, not on heartbeats).
    """
    found: dict[str, tuple[int, list[str]]] = {}
    for group in sorted(index.groups(), key=lambda g: (g.name, g.type)):
        count, first = found.get(group.name, (0, []))
        first = heapq.nsmallest(_OWNERS_SHOWN, [*first, *index.members(group)])
        found[group.name] = (count + group.size, first)
    return found


class ModelsView:
    """The OpenAI-shaped model list, cached per index membership version.

    Each entry also says the model's `type` and `capabilities` (the union over the nodes
    serving it; OpenAI clients ignore fields they do not know). Rebuilt in O(candidates)
    only when membership changes: a changed capability list re-indexes the model, so it
    changes membership too.
    """

    def __init__(self, index: FleetIndex) -> None:
        self._index = index
        self._version = -1
        self._body = b""
        self._entries: dict[str, dict[str, Any]] = {}

    def _refresh(self) -> None:
        if self._version == self._index.membership:
            return
        index = self._index
        capabilities: dict[str, set[str]] = {}
        types: dict[str, str] = {}
        for group in index.groups():
            found = capabilities.setdefault(group.name, set())
            types.setdefault(group.name, group.type)
            for node in index.members(group):
                served = index.nodes[node].models.get((group.name, group.type))
                if served is not None:
                    found.update(served.capabilities)
        self._entries = {
            name: {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": _owned_by(count, first),
                "type": types.get(name, "llm"),
                "capabilities": sorted(capabilities.get(name, ())),
            }
            for name, (count, first) in owners(index).items()
        }
        self._body = json.dumps({"object": "list", "data": list(self._entries.values())}).encode()
        self._version = index.membership

    def body(self) -> bytes:
        self._refresh()
        return self._body

    def entry(self, model: str) -> dict[str, Any] | None:
        """One model's entry (`GET /v1/models/{id}`), None when no fresh node serves it."""
        self._refresh()
        return self._entries.get(model)


def _owned_by(count: int, first: list[str]) -> str:
    shown = ",".join(first)
    return shown if count <= len(first) else f"{shown} +{count - len(first)} more"


@dataclass(frozen=True)
class NodesQuery:
    node: str | None = None
    model: str | None = None
    stale: bool | None = None
    limit: int = DEFAULT_PAGE
    after: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, str]) -> NodesQuery:
        """From query parameters; raises ValueError naming a bad one."""
        stale_text = params.get("stale")
        if stale_text not in (None, "true", "false"):
            raise ValueError("stale must be true or false")
        try:
            limit = int(params.get("limit", DEFAULT_PAGE))
        except ValueError:
            raise ValueError("limit must be an integer") from None
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}")
        return cls(
            node=params.get("node"),
            model=params.get("model"),
            stale=None if stale_text is None else stale_text == "true",
            limit=limit,
            after=params.get("after"),
        )


def nodes_page(
    index: FleetIndex,
    query: NodesQuery,
    *,
    now: float,
    breakers_of: Callable[[str], dict[str, str]],
) -> dict[str, Any]:
    """One page of `/nodes`: O(page) for a plain page, O(servers of it) for `?model=`."""
    if query.node is not None:
        ids: Iterable[str] = [query.node] if query.node in index.nodes else []
    elif query.model is not None:
        ids = sorted(servers_of(index, query.model))
    else:
        ids = index.node_ids
    ordered = list(ids) if not isinstance(ids, list) else ids
    start = bisect.bisect_right(ordered, query.after) if query.after is not None else 0
    page: list[dict[str, Any]] = []
    next_cursor: str | None = None
    for node_id in _from(ordered, start):
        entry = index.nodes[node_id]
        if query.stale is not None and entry.stale(now) != query.stale:
            continue
        if len(page) == query.limit:
            next_cursor = page[-1]["node_id"]
            break
        page.append(
            {
                "node_id": node_id,
                "age_s": round(entry.age_s(now), 3),
                "stale": entry.stale(now),
                "local": node_id == index.local_node,
                "breakers": breakers_of(node_id),
                "router_inflight": {
                    kind: count
                    for kind in SLOT_KINDS
                    if (count := index.router_inflight.get((node_id, kind), 0))
                },
                "record": entry.record.model_dump(mode="json", exclude_none=True),
            }
        )
    return {
        "nodes": page,
        "local_node": index.local_node,
        "total": len(index.nodes),
        "next": next_cursor,
    }


def _from(ordered: list[str], start: int) -> Iterable[str]:
    for at in range(start, len(ordered)):
        yield ordered[at]
