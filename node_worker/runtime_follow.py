"""Following what the runtimes say about themselves between two discoveries.

- Slots: the node's capacity per kind is the sum of what the runtimes serving that kind
  say they run at once (llama.cpp's `total_slots`), capped by configuration
  (`admission.node_capacity`), recomputed after every probe round.
- A swapped model: a single-model llama.cpp server that answers as another model than it
  was listed with was restarted with another GGUF; it is listed again at once instead of
  serving jobs for the old name until the next `rediscover_s`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from node_worker.admission import Admission, node_capacity
from node_worker.backends import Backend
from node_worker.catalog import Catalog, CatalogModel
from node_worker.config import Health, Limits
from node_worker.discovery import catalog_of, refresh
from services.wire import slot_kind

log = logging.getLogger("inferbus.worker")


class RuntimeFollower:
    def __init__(
        self,
        *,
        backends: Sequence[Backend],
        admission: Admission,
        limits: Limits,
        health: Health,
        relisted: Callable[[Catalog], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        """`relisted` takes the new catalog after a runtime was listed again; `spawn` runs
        that listing as a task the worker owns."""
        self._backends = backends
        self._backend_of = {id(b.runtime): b for b in backends if b.runtime is not None}
        self._admission = admission
        self._configured = {"llm": limits.llm_concurrency, "vision": limits.vision_concurrency}
        self._health = health
        self._relisted = relisted
        self._spawn = spawn
        self._relisting: set[int] = set()  # ids of backends being listed again now

    def follow_slots(self, catalog: Catalog) -> None:
        """Slots per kind from what the serving runtimes say they run at once."""
        serving: dict[str, set[int]] = {"llm": set(), "vision": set()}
        for model in catalog.models.values():
            if model.type != "embed":
                serving[slot_kind(model.type)].add(id(model.runtime))
        for kind, runtimes in serving.items():
            slots = [self._backend_of[key].slots for key in runtimes if key in self._backend_of]
            self._admission.resize(kind, node_capacity(self._configured[kind], slots))

    def answered_as(self, served: CatalogModel, named: str) -> None:
        """A runtime answered a job for `served` naming the model `named` (not it)."""
        backend = self._backend_of.get(id(served.runtime))
        if backend is None or backend.config.kind != "llamacpp" or len(backend.models) != 1:
            return  # several models, or a server that maps names: not a swap
        if id(backend) in self._relisting:
            return
        log.warning(
            "runtime %s answered as model %r, listed as %r: listing it again",
            backend.config.url,
            named,
            served.name,
        )
        self._relisting.add(id(backend))
        self._spawn(self._relist(backend))

    async def _relist(self, backend: Backend) -> None:
        try:
            await refresh(backend, self._health, relist=True)
            catalog = catalog_of(self._backends)
            self.follow_slots(catalog)
            self._relisted(catalog)
        finally:
            self._relisting.discard(id(backend))
