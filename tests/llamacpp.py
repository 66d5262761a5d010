"""A real llama.cpp server (`llama_cpp.server`) on loopback, for integration tests.

The worker's OpenAI-compatible adapter must be tested against the real thing, not a fake of
it: `LlamaCppServer` runs `python -m llama_cpp.server` as a subprocess on a free port and
`llama_server` is a session fixture serving the tiny model from `tests.tiny_gguf`.

Facts about the server (llama-cpp-python 0.3.36) that tests and the adapter rely on; the
wire-level ones are pinned in `tests/test_llamacpp_fixture.py`:

* It runs one generation at a time behind a global lock; concurrent requests queue.
* Upstream's default `interrupt_requests=True` cuts a running *stream* short as soon as
  another request queues: it sends `data: [DONE]` with no `finish_reason` chunk and then
  drops the connection mid-body (httpx raises `RemoteProtocolError`). We start it with
  `--interrupt_requests False` so concurrent tests see complete answers; pass
  `interrupt_requests=True` to reproduce the upstream behaviour.
* The request's `model` field is not checked: unknown names are served by the default model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.lifecycle import AsyncService
from tests.tiny_gguf import write_tiny_llama_gguf

__all__ = ["LlamaCppServer", "LlamaCppServerError", "llama_server"]

# uvicorn logs the bound port even when asked for port 0, which lets the OS pick a free
# port without the bind-close-rebind race of probing for one ourselves.
_RUNNING_LINE = re.compile(rb"Uvicorn running on (https?://\S+)")
_OUTPUT_TAIL_LINES = 40
_STREAM_LINE_LIMIT = 1 << 20


class LlamaCppServerError(RuntimeError):
    """The server failed to start; the message carries the tail of its output."""


class LlamaCppServer(AsyncService):
    """`async with LlamaCppServer(path) as server:` a started server at `server.url`.

    Args:
        model_path: GGUF file to serve.
        model_alias: The name `/v1/models` lists; exposed as `.model`.
        host: Listen address; loopback so tests never expose a port.
        port: 0 lets the OS choose a free port (read back from uvicorn's log).
        n_ctx: Context window in tokens; prompts longer than this are rejected with 400.
        seed: Sampling seed, so a run can be replayed (temperature 0 is deterministic anyway).
        interrupt_requests: Upstream's behaviour of truncating a stream when another request
            arrives; off by default because it makes concurrent tests flaky.
        startup_timeout: Seconds to wait for `/v1/models` to answer before giving up.
        extra_args: More `llama_cpp.server` flags, e.g. `("--n_threads", "2")`.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        model_alias: str = "tiny-llama",
        host: str = "127.0.0.1",
        port: int = 0,
        n_ctx: int = 512,
        seed: int = 0,
        interrupt_requests: bool = False,
        startup_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_path = model_path
        self.model = model_alias
        self.host = host
        self.n_ctx = n_ctx
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._args = [
            *("--model", str(model_path)),
            *("--model_alias", model_alias),
            *("--host", host),
            *("--port", str(port)),
            *("--n_ctx", str(n_ctx)),
            *("--seed", str(seed)),
            *("--interrupt_requests", str(interrupt_requests)),
            *("--verbose", "False"),
            # mlock fails noisily under the low RLIMIT_MEMLOCK of containers and CI runners.
            *("--use_mlock", "False"),
            *extra_args,
        ]
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._output_tail: deque[str] = deque(maxlen=_OUTPUT_TAIL_LINES)
        self._base_url: str | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:41234`; append `/v1/...` for the OpenAI routes."""
        if self._base_url is None:
            raise RuntimeError("LlamaCppServer is not running")
        return self._base_url

    @property
    def pid(self) -> int | None:
        """The server's process id, for chaos tests that SIGSTOP or kill it."""
        return None if self._process is None else self._process.pid

    def output_tail(self) -> str:
        """The last lines the server printed (stdout and stderr), for failure messages."""
        return "\n".join(self._output_tail)

    async def start(self) -> None:
        """Spawn the server and return once `/v1/models` answers.

        Raises:
            LlamaCppServerError: the process exited, or did not answer within the timeout.
        """
        if self._process is not None:
            raise RuntimeError("LlamaCppServer already started")
        started_at = time.monotonic()
        announced_url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llama_cpp.server",
            *self._args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=_server_environment(),
            limit=_STREAM_LINE_LIMIT,
        )
        self._pump = asyncio.create_task(self._pump_output(self._process, announced_url))
        try:
            async with asyncio.timeout(self.startup_timeout):
                self._base_url = await _wait_until_serving(announced_url, self._pump)
        except BaseException as exc:
            tail = self.output_tail()
            returncode = self._process.returncode
            await self.stop()
            if isinstance(exc, TimeoutError | LlamaCppServerError):
                reason = (
                    f"exited with code {returncode}"
                    if returncode is not None
                    else f"not serving after {self.startup_timeout:g}s"
                )
                raise LlamaCppServerError(
                    f"llama_cpp.server {reason}; last output:\n{tail}"
                ) from exc
            raise
        self.startup_seconds = time.monotonic() - started_at

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; safe to call twice or after a failed start."""
        self._base_url = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5.0):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump_output(
        self, process: asyncio.subprocess.Process, announced_url: asyncio.Future[str]
    ) -> None:
        """Drain the server's output for its whole life: a full pipe would block it.

        Ends when the process has closed its output and exited, which is how startup notices
        a server that died.
        """
        if process.stdout is not None:
            async for raw_line in process.stdout:
                self._output_tail.append(raw_line.decode(errors="replace").rstrip())
                if not announced_url.done() and (match := _RUNNING_LINE.search(raw_line)):
                    announced_url.set_result(match.group(1).decode())
        await process.wait()


async def _wait_until_serving(announced_url: asyncio.Future[str], pump: asyncio.Task[None]) -> str:
    """The server's base URL, once it has announced it and `/v1/models` answers 200."""
    startup_outcomes: list[asyncio.Future[Any]] = [announced_url, pump]
    await asyncio.wait(startup_outcomes, return_when=asyncio.FIRST_COMPLETED)
    if not announced_url.done():
        raise LlamaCppServerError("server exited during startup")
    base_url = announced_url.result()
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as client:
        while not pump.done():
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/v1/models")).status_code == 200:
                    return base_url
            await asyncio.sleep(0.05)
    raise LlamaCppServerError("server exited during startup")


def _server_environment() -> dict[str, str]:
    """Our environment minus variables `llama_cpp.server` would read as settings.

    Its settings are pydantic `BaseSettings`, so a stray `PORT`, `MODEL` or `API_KEY` in a
    developer's shell would silently override the command line (uvicorn even reads `HOST`
    and `PORT` directly). The field names come from llama_cpp itself so they cannot drift.
    """
    from llama_cpp.server.settings import Settings

    setting_names = {str(name).lower() for name in Settings.model_fields} | {"config_file"}
    return {key: value for key, value in os.environ.items() if key.lower() not in setting_names}


@pytest.fixture(scope="session")
async def llama_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[LlamaCppServer]:
    """One llama.cpp server for the whole session, serving the tiny model as "tiny-llama".

    Session scope because startup costs about a second and the model is stateless between
    requests; tests must not rely on its sampling state.
    """
    model_path = write_tiny_llama_gguf(tmp_path_factory.mktemp("llamacpp") / "tiny-llama.gguf")
    async with LlamaCppServer(model_path) as server:
        yield server
