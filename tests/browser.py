"""Driving the live page in a real browser: Debian's chromium under Playwright.

Playwright's own browser downloads are never used (`playwright install` is not run):
Playwright launches the system's `chromium` by path. Where it (or the `playwright`
package) is missing, `browser_missing()` says why, and the browser tests skip with it.
Screenshots go to `.inferbus/test-artifacts/` (ignored by git).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / ".inferbus" / "test-artifacts"
CHROMIUM = os.environ.get("INFERBUS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def worker_config(
    path: Path, *, node_id: str, nats_url: str, runtime_url: str, heartbeat_s: float
) -> Path:
    path.write_text(
        f'node_id = "{node_id}"\n'
        f'nats_url = ["{nats_url}"]\n'
        f"heartbeat_s = {heartbeat_s}\n"
        "[[backends]]\n"
        'kind = "ollama"\n'
        f'url = "{runtime_url}"\n'
    )
    return path


@asynccontextmanager
async def worker_process(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m node_worker --config <config>`, killed at the end if still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node_worker",
        "--config",
        str(config),
        "--log-level",
        "WARNING",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
