"""A served model's details from a node that serves it (`node.<id>.show`, services/show.py),
for the Ollama dialect's `POST /api/show`.

Asks a few fresh nodes that serve the model and understand the request (`show` in their
`wire_features`), one after the other, until one answers — first the one the caller
names (the Ollama dialect names the node whose record its `/api/tags` shows, so both
describe the model alike); the answer is kept for
`ttl_s` per (model, verbose), so clients that show a model on every page load cost the
fleet one runtime call per model per minute. Finding the nodes is O(nodes asked), not
O(nodes serving the model).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from router.fleet.index import FleetIndex
from router.serving.node_link import NodeLink
from services.errors import ErrorCode, InferbusError
from services.show import ShowRequest, decode_show_reply
from services.subjects import Subjects

__all__ = ["ModelShows"]

_MODEL_TYPES = ("llm", "vision", "code", "embed")


class ModelShows:
    def __init__(
        self,
        link: NodeLink,
        subjects: Subjects,
        index: FleetIndex,
        clock: Callable[[], float],
        *,
        ttl_s: float = 60.0,
        nodes_asked: int = 3,
        timeout_s: float = 10.0,
        kept: int = 512,
    ) -> None:
        self._link = link
        self._subjects = subjects
        self._index = index
        self._clock = clock
        self._ttl_s = ttl_s
        self._nodes_asked = nodes_asked
        self._timeout_s = timeout_s
        self._kept_max = kept
        self._kept: OrderedDict[tuple[str, bool], tuple[float, dict[str, Any]]] = OrderedDict()

    def _askable(self, node: str, now: float) -> bool:
        entry = self._index.nodes.get(node)
        return (
            entry is not None
            and self._index.live(node, now)
            and "show" in entry.record.wire_features
        )

    def _servers(self, name: str, now: float, first: str | None) -> Iterator[str]:
        """Fresh nodes serving `name` whose workers answer `node.<id>.show`, `first`
        first when it is one of them."""
        index = self._index
        if first is not None and self._askable(first, now):
            entry = index.nodes[first]
            if entry.fresh and any((name, kind) in entry.models for kind in _MODEL_TYPES):
                yield first
        for model_type in _MODEL_TYPES:
            group = index.group(name, model_type)
            if group is None:
                continue
            for node in index.members(group):
                if self._askable(node, now):
                    yield node

    async def show(
        self, name: str, *, verbose: bool = False, first: str | None = None
    ) -> dict[str, Any] | InferbusError:
        """Ollama's ShowResponse for `name`, or why there is none (MODEL_NOT_FOUND when no
        fresh node serves it, else the last node's failure); `first` is asked first."""
        now = self._clock()
        key = (name, verbose)
        kept = self._kept.get(key)
        if kept is not None and kept[0] > now:
            self._kept.move_to_end(key)
            return kept[1]
        servers = self._servers(name, now, first)
        asked = list(itertools.islice(_unique(servers), self._nodes_asked))
        if not asked:
            return InferbusError(ErrorCode.MODEL_NOT_FOUND, "no node serves it")
        request = ShowRequest(model=name, verbose=verbose).model_dump_json().encode()
        last = InferbusError(ErrorCode.BACKEND_UNAVAILABLE, "no node answered")
        for node in asked:
            try:
                data = await self._link.ask(
                    node, self._subjects.show(node), request, self._timeout_s
                )
            except InferbusError as error:
                last = error
                continue
            reply = decode_show_reply(data)
            if isinstance(reply, InferbusError):
                last = reply
                continue
            if reply.error is not None:
                last = InferbusError(reply.error.code, f"{node}: {reply.error.message}")
                continue
            assert reply.show is not None
            self._keep(key, reply.show)
            return reply.show
        return last

    def forget(self) -> None:
        """Drop every kept answer (a test, or an operator, wants fresh ones)."""
        self._kept.clear()

    def _keep(self, key: tuple[str, bool], show: dict[str, Any]) -> None:
        self._kept[key] = (self._clock() + self._ttl_s, show)
        self._kept.move_to_end(key)
        while len(self._kept) > self._kept_max:
            self._kept.popitem(last=False)


def _unique(nodes: Iterator[str]) -> Iterator[str]:
    """Each node once (a node serving a model under two types is asked once), lazily."""
    seen: set[str] = set()
    for node in nodes:
        if node not in seen:
            seen.add(node)
            yield node
