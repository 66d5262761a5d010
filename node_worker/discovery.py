"""Discovery: probe each configured runtime and ask what it serves right now.

Every heartbeat each runtime is probed (cheap); its models are listed at start, every
`rediscover_s`, and whenever it comes back. A runtime that stops answering leaves the
catalog at the next probe and returns by itself when it answers again; the worker keeps
serving what the others have.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from node_worker.backends import Backend
from node_worker.catalog import Catalog, RuntimeListing
from node_worker.config import Health
from services.errors import ErrorCode, InferbusError

log = logging.getLogger("inferbus.worker.discovery")


async def refresh(backend: Backend, policy: Health, *, relist: bool) -> None:
    """Probe one runtime; list its models when asked to or when it (re)appears."""
    if backend.runtime is None:
        return
    was_serving = backend.serving
    first_probe = backend.state == "unknown"
    try:
        latency_ms = await backend.runtime.health()
        backend.probed(latency_ms, None, policy)
        if backend.serving and (relist or not was_serving):
            backend.listed(await backend.runtime.list_models())
    except InferbusError as error:
        backend.probed(None, error, policy)
    except Exception as exc:  # an adapter's bug must not stop the other runtimes' round
        log.exception("backend %s at %s: probe failed", backend.config.kind, backend.config.url)
        backend.probed(
            None, InferbusError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), policy
        )
    if not backend.serving and (was_serving or first_probe):
        # At start too: a runtime that never answered must be named with its error, not
        # only missed in a count of zero models.
        log.warning(
            "backend %s at %s is %s%s",
            backend.config.kind,
            backend.config.url,
            backend.state,
            f": {backend.last_error}" if backend.last_error else "",
        )
    elif backend.serving and not was_serving:
        log.info(
            "backend %s at %s is %s with %d models",
            backend.config.kind,
            backend.config.url,
            backend.state,
            len(backend.models),
        )


def catalog_of(backends: Sequence[Backend]) -> Catalog:
    """What the node serves: the models of the runtimes that are healthy or degraded."""
    return Catalog(
        RuntimeListing(backend.runtime, backend.models, backend.config.price_of)
        for backend in backends
        if backend.serving and backend.runtime is not None
    )


async def discover(backends: Sequence[Backend], policy: Health, *, relist: bool) -> Catalog:
    await asyncio.gather(*(refresh(backend, policy, relist=relist) for backend in backends))
    return catalog_of(backends)
