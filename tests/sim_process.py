"""The simulator as its own process (`python -m tools.simulator`), for CLI tests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ANNOUNCE = "simulator listening on "


@asynccontextmanager
async def simulator_process(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start it with `args`, wait for its announce line; yields (process, that line).

    The test ends it (SIGTERM) to check how it exits; whatever is still running is killed.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.simulator",
        *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        yield process, line
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
