"""The fleet as one Ollama: `/api/tags` (every model once) and `/api/ps` (every loaded
model, with the node that runs it), read from the fleet index.

Neither is rebuilt per request. `/api/tags` is rebuilt when the index's membership changes
(a node joins, leaves or changes its models; heartbeats do not) in O(candidates), like
`/v1/models`. `/api/ps` is rebuilt when membership changes or a node's loaded models do
(`FleetIndex.running_changes`, bumped per record in O(record)), in O(catalog + loaded
models): it walks each model's running buckets only. Both are cached as JSON bytes.

A model served by several nodes is listed once; its details (digest, size, family,
parameter size, quantization, modified time) come from the first node by id that
reports them, its capabilities are the union over the nodes. Where no node reports a
fact, the entry holds what Ollama's own Go types marshal for an unset one (`""`, `0`,
the zero time), so every Ollama client parses it. The one exception is a loaded model's
`expires_at`: a runtime that reports none (llama.cpp, vLLM) keeps its model loaded until
it stops, which Ollama says with a time centuries ahead (`keep_alive: -1`); the zero time
would read as expired (`ollama ps` prints "Stopping...", Open WebUI shows it unloaded).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from router.fleet.index import FleetIndex, ModelGroup
from services.capabilities import RunningModel, ServedModel

__all__ = ["KEPT_LOADED", "ZERO_TIME", "RunningView", "TagsView", "running_members"]

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as Ollama marshals an unset one
# A loaded model with no expiry: Ollama's `keep_alive: -1` is now + 2^63 ns (year 2318),
# which its CLI prints as "Forever" and every client sorts as the longest time left.
KEPT_LOADED = "2318-01-01T00:00:00Z"


def running_members(index: FleetIndex, group: ModelGroup) -> Iterator[str]:
    """The nodes of a group whose copy of the model is loaded now."""
    if group.local is not None and group.local[0] and index.local_node is not None:
        yield index.local_node
    for (running, _size), bucket in group.buckets.items():
        if running:
            yield from bucket


def _details(model: ServedModel) -> dict[str, Any]:
    details: dict[str, Any] = {
        "parent_model": "",
        "format": model.format or "",
        "family": model.family or "",
        "families": [model.family] if model.family else None,
        "parameter_size": model.parameter_size or "",
        "quantization_level": model.quantization_level or "",
    }
    if model.context_window:
        details["context_length"] = model.context_window
    return details


def _size(model: ServedModel) -> int:
    if model.size_bytes is not None:
        return model.size_bytes
    return round(model.size_gb * 1e9) if model.size_gb else 0


def _describing(index: FleetIndex, group: ModelGroup) -> tuple[str, ServedModel]:
    """The group's model as the first node by id that reports its details describes it:
    (that node, its record of the model)."""
    best: tuple[bool, str] | None = None
    chosen: ServedModel | None = None
    for node in index.members(group):
        served = index.nodes[node].models[group.name, group.type]
        rank = (served.digest is None, node)
        if best is None or rank < best:
            best, chosen = rank, served
    assert best is not None  # a group has at least one member
    assert chosen is not None
    return best[1], chosen


class TagsView:
    """`/api/tags`, cached per index membership."""

    def __init__(self, index: FleetIndex) -> None:
        self._index = index
        self._version = -1
        self._body = b""
        self._models: dict[str, ServedModel] = {}
        self._describers: dict[str, str] = {}

    def _refresh(self) -> None:
        if self._version == self._index.membership:
            return
        index = self._index
        chosen: dict[str, ServedModel] = {}
        describers: dict[str, str] = {}
        capabilities: dict[str, set[str]] = {}
        for group in sorted(index.groups(), key=lambda g: (g.name, g.type)):
            node, described = _describing(index, group)
            held = chosen.get(group.name)
            if held is None or (held.digest is None and described.digest is not None):
                chosen[group.name] = described
                describers[group.name] = node
            found = capabilities.setdefault(group.name, set())
            for node in index.members(group):
                found.update(index.nodes[node].models[group.name, group.type].capabilities)
        entries = [
            {
                "name": name,
                "model": name,
                "modified_at": model.modified_at or ZERO_TIME,
                "size": _size(model),
                "digest": model.digest or "",
                "details": _details(model),
                "capabilities": sorted(capabilities[name]),
            }
            for name, model in sorted(chosen.items())
        ]
        self._models = chosen
        self._describers = describers
        self._body = json.dumps({"models": entries}).encode()
        self._version = index.membership

    def body(self) -> bytes:
        self._refresh()
        return self._body

    def model(self, name: str) -> ServedModel | None:
        """The describing record of a model some fresh node serves, else None."""
        self._refresh()
        return self._models.get(name)

    def describer(self, name: str) -> str | None:
        """The node whose record of the model this catalog shows (the first by id that
        reports its details), so `/api/show` asks it first and both say the same."""
        self._refresh()
        return self._describers.get(name)


class RunningView:
    """`/api/ps`: each loaded (model, node) pair once, with `node` naming where it runs;
    longest time left first, as Ollama orders it. Cached per (membership, loaded models)."""

    def __init__(self, index: FleetIndex) -> None:
        self._index = index
        self._version: tuple[int, int] = (-1, -1)
        self._body = b""

    def _refresh(self) -> None:
        index = self._index
        version = (index.membership, index.running_changes)
        if self._version == version:
            return
        entries: list[dict[str, Any]] = []
        for group in index.groups():
            for node in running_members(index, group):
                record = index.nodes[node]
                served = record.models[group.name, group.type]
                loaded = _loaded(record.record.running_models, group.name)
                entries.append(_ps_entry(node, served, loaded))
        entries.sort(key=lambda e: (e["name"], e["node"]))
        entries.sort(key=lambda e: str(e["expires_at"]), reverse=True)
        self._body = json.dumps({"models": entries}).encode()
        self._version = version

    def body(self) -> bytes:
        self._refresh()
        return self._body


def _loaded(running: tuple[RunningModel, ...], name: str) -> RunningModel:
    return next((entry for entry in running if entry.name == name), RunningModel(name=name))


def _ps_entry(node: str, served: ServedModel, loaded: RunningModel) -> dict[str, Any]:
    return {
        "name": served.name,
        "model": served.name,
        "size": loaded.size_bytes or _size(served),
        "digest": served.digest or "",
        "details": _details(served),
        "expires_at": loaded.expires_at or KEPT_LOADED,
        "size_vram": loaded.size_vram or 0,
        "context_length": loaded.context_length or served.context_window or 0,
        "node": node,
    }
