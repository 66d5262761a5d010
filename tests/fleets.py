"""The fleet's two committed NATS auth setups, as real nats-servers for tests.

`accounts`: ops/nats/accounts.conf exactly as committed (users with passwords).
`jwt`: operator mode, made by ops/nats/make_jwt_fleet.py the way an operator runs it
(a fresh operator, account and creds files per run), served with a MEMORY resolver.
Both hold the same users with the same permissions: gpu-a, gpu-b, router, ops.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from services.localnet import free_port
from services.nats_server import NatsServer
from services.settings import NatsAuth

OPS_NATS = Path(__file__).resolve().parent.parent / "ops" / "nats"
SETUPS = ("accounts", "jwt")
# Replaced in every rendered copy: the monitoring port (-1: one from the OS) and the store.
MONITOR_PORT = "http_port: 8222"
STORE_DIR = '"/var/lib/nats"'

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
    """The setup's server, with JetStream on (`-js`, as single.conf has it) for the shared
    idempotency store."""
    store = directory / "jetstream"
    if setup == "accounts":
        async with NatsServer(
            config_file=OPS_NATS / "accounts.conf", jetstream_dir=store
        ) as server:
            yield Fleet(setup, server)
        return
    config = make_jwt_setup(directory)
    async with NatsServer(config_file=config, jetstream_dir=store) as server:
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


def render_cluster(directory: Path, *, with_accounts: bool = False) -> list[Path]:
    """The three committed cluster files, with hosts nats-a/b/c on loopback ports; with
    `with_accounts`, their commented `include ./accounts.conf` line turned on."""
    route_ports = {name: free_port() for name in "abc"}
    configs = []
    for name, port in route_ports.items():
        replacements = {
            f"nats-route://nats-{peer}:6222": f"nats-route://127.0.0.1:{peer_port}"
            for peer, peer_port in route_ports.items()
        }
        store = directory / f"store-{name}"
        replacements |= {
            "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{port}",
            MONITOR_PORT: "http_port: -1",
            STORE_DIR: f'"{store}"',
        }
        (directory / name).mkdir()
        if with_accounts:  # beside the copy: include paths are relative to the file
            shutil.copy(OPS_NATS / "accounts.conf", directory / name)
            replacements["# include ./accounts.conf"] = "include ./accounts.conf"
        configs.append(render(f"cluster-{name}.conf", directory / name, replacements))
    return configs
