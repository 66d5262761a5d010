"""The fleet's two committed NATS auth setups, as real nats-servers for tests.

`accounts`: ops/nats/accounts.conf exactly as committed (users with passwords).
`jwt`: operator mode, made by ops/nats/make_jwt_fleet.py the way an operator runs it
(a fresh operator, account and creds files per run), served with a MEMORY resolver.
Both hold the same users with the same permissions: gpu-a, gpu-b, router, ops.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from services.nats_server import NatsServer
from services.settings import NatsAuth

OPS_NATS = Path(__file__).resolve().parent.parent / "ops" / "nats"
SETUPS = ("accounts", "jwt")
NODE_ARGS = ("--node", "gpu-a", "--node", "gpu-b")

# The placeholders committed in accounts.conf: the file is used exactly as written.
PASSWORDS = {
    "gpu-a": "CHANGE-ME-gpu-a",
    "gpu-b": "CHANGE-ME-gpu-b",
    "router": "CHANGE-ME-router",
    "ops": "CHANGE-ME-ops",
}


@dataclass(frozen=True)
class Fleet:
    """A running server and how each committed user logs in to it."""

    setup: str
    server: NatsServer
    creds_dir: Path | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def auth(self, user: str) -> NatsAuth:
        if self.creds_dir is not None:
            return NatsAuth(creds_file=self.creds_dir / f"{user}.creds")
        return NatsAuth.model_validate({"user": user, "password": PASSWORDS[user]})


def make_jwt_setup(directory: Path) -> Path:
    """Run the committed generator for gpu-a and gpu-b; the server config that uses it."""
    subprocess.run(
        [sys.executable, str(OPS_NATS / "make_jwt_fleet.py"), str(directory), *NODE_ARGS],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = directory / "server.conf"
    config.write_text("include ./operator.conf\n")  # the port comes from `-p -1`
    return config


@contextlib.asynccontextmanager
async def fleet_server(setup: str, directory: Path) -> AsyncIterator[Fleet]:
    if setup == "accounts":
        async with NatsServer(config_file=OPS_NATS / "accounts.conf") as server:
            yield Fleet(setup, server)
        return
    config = make_jwt_setup(directory)
    async with NatsServer(config_file=config) as server:
        yield Fleet(setup, server, directory / "creds")


async def connect_error(url: str, **options: Any) -> Exception:
    """Why a client cannot connect. Its socket is closed either way: nats-py leaves it
    open when the handshake after TCP fails (and its close() hangs after a failed TLS
    handshake, so this is for plain connections)."""
    client = NatsClient()

    async def quiet(error: Exception) -> None:
        pass

    try:
        await client.connect(
            url,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=2,
            error_cb=quiet,
            **options,
        )
    except (OSError, nats.errors.Error) as error:
        return error
    finally:
        await client.close()
    raise AssertionError(f"a client got into {url}")


def render(name: str, directory: Path, replacements: dict[str, str]) -> Path:
    """A copy of a committed config in `directory` with the given values replaced."""
    text = (OPS_NATS / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"ops/nats/{name} no longer contains {old!r}"
        text = text.replace(old, new)
    path = directory / name
    path.write_text(text)
    return path
