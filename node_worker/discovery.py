"""Discovery: ask each configured runtime what it serves right now.

A runtime that does not answer is left out (with a warning naming it) and comes back by
itself at the next discovery; the worker keeps serving what the others have.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from node_worker.catalog import Catalog, RuntimeListing
from node_worker.config import Backend
from services.errors import InferbusError
from services.runtimes.base import Runtime

log = logging.getLogger("inferbus.worker.discovery")


@dataclass(frozen=True)
class ConfiguredRuntime:
    config: Backend
    runtime: Runtime


def allowed(listing: RuntimeListing, allow: list[str] | None) -> RuntimeListing:
    """Keep only the models an operator allowed, when the backend names any."""
    if allow is None:
        return listing
    return RuntimeListing(listing.runtime, [m for m in listing.models if m.name in allow])


async def _list(backend: ConfiguredRuntime) -> RuntimeListing | None:
    try:
        await backend.runtime.health()
        models = await backend.runtime.list_models()
    except InferbusError as error:
        log.warning(
            "backend %s at %s left out: %s",
            backend.config.kind,
            backend.config.url,
            error.message,
            extra={"code": error.code.value},
        )
        return None
    return allowed(RuntimeListing(backend.runtime, models), backend.config.models)


async def discover(backends: list[ConfiguredRuntime]) -> Catalog:
    listings = await asyncio.gather(*(_list(backend) for backend in backends))
    return Catalog(listing for listing in listings if listing is not None)
