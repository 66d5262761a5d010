"""How a server process runs: its main coroutine on uvloop when it is installed (it is on
Linux), and the garbage collector tuned for serving once the process has started."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# CPython collects its youngest generation every 700 allocations net of frees. A process
# that allocates a few hundred objects per job then collects every few jobs, and every
# tenth of those promotes survivors until a full collection walks the whole heap (~200,000
# objects in a worker, ~150 ms each): 36 % of a worker's CPU at c64 in ops/bench. Every
# 10,000 allocations the same work is done a fourteenth as often; cycles of garbage wait a
# little longer to be freed.
YOUNG_COLLECTION_EVERY = 10_000


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def tune_gc_for_serving() -> None:
    """Collect young objects every YOUNG_COLLECTION_EVERY allocations (once started)."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, oldest)
