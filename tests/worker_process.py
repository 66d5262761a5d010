"""A node worker as its own process (`python -m node_worker`), for tests that kill,
freeze or drain it with a signal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def worker_process(
    tmp_path: Path,
    node: str,
    nats_url: str,
    runtime_url: str,
    *,
    kind: str = "ollama",
    slots: int | None = None,
    drain_grace_s: float | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A worker in front of one runtime, heartbeating every 10 s (so within a test's
    budget only the router's liveness probe can notice it gone); killed at the end."""
    lines = [f'node_id = "{node}"', f'nats_url = "{nats_url}"', "heartbeat_s = 10"]
    if drain_grace_s is not None:
        lines.append(f"drain_grace_s = {drain_grace_s}")
    if slots is not None:
        lines += ["[limits]", f"llm_concurrency = {slots}"]
    lines += ["[[backends]]", f'kind = "{kind}"', f'url = "{runtime_url}"']
    config = tmp_path / f"{node}.toml"
    config.write_text("\n".join(lines) + "\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node_worker", "--config", str(config), "--log-level", "WARNING",
        cwd=ROOT, env=os.environ.copy(),
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        await process.wait()
