"""A local fleet of processes for a benchmark, and the timing of calls against it.

The benchmarks in this folder import it as a sibling module (`import harness`): they run
as scripts, so their own directory is first on the import path.

  fleet()        a nats-server and a temporary directory for configs and child logs; every
                 child started through it is stopped on the way out, a second Ctrl-C or
                 SIGTERM included (see `run_cli`)
  Fleet.*        the runtime simulator, a node worker in front of it, the router
  measure()      latency and errors of a call repeated from N concurrent loops
  profiling()    py-spy records some processes while a phase runs; `read_stacks` & co.
                 turn its raw output into tables
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.localnet import free_port
from services.loop import run
from services.nats_server import NatsServer

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"Content-Type": "application/json"}
# The project's code: what a profile's "project function" table keeps.
PROJECT_CODE = ("router/", "services/", "node_worker/")

# Process groups started and not yet reaped: killed on the way out even if the orderly
# stop in `finally` was itself interrupted (a second Ctrl-C).
_LIVE_GROUPS: set[int] = set()


# --- measuring ------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def for_seconds(
    step: Callable[[], Awaitable[None]], concurrency: int, seconds: float
) -> float:
    """Await `step` over and over from `concurrency` loops for `seconds`; the time it took."""
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < stop_at:
            await step()

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return time.perf_counter() - started


@dataclass
class Sample:
    latencies_ms: list[float]
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        """Successful answers per second."""
        return (len(self.latencies_ms) - self.errors) / self.seconds

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


async def measure(call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float) -> Sample:
    """Time `call` (True: a good answer); a failed request or a timeout is an error."""
    latencies: list[float] = []
    errors = 0

    async def step() -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            ok = await call()
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        latencies.append((time.perf_counter() - started) * 1000)
        errors += not ok

    return Sample(latencies, errors, await for_seconds(step, concurrency, seconds))


# --- processes ------------------------------------------------------------------------


class Children:
    """The benchmark's child processes, each in its own session; all stopped on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: list[asyncio.subprocess.Process] = []

    async def spawn(
        self, name: str, *argv: str, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> asyncio.subprocess.Process:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop them in order
            )
        self.processes.append(process)
        _LIVE_GROUPS.add(process.pid)
        return process

    def tail(self, name: str, lines: int = 15) -> str:
        log = self.logs / f"{name}.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    async def wait_ready(
        self,
        name: str,
        process: asyncio.subprocess.Process,
        ready: Callable[[], Awaitable[bool]],
        timeout_s: float,
    ) -> None:
        """Poll `ready` until it holds; fail with the child's log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if process.returncode is not None:
                raise RuntimeError(
                    f"{name} exited early ({process.returncode}):\n{self.tail(name)}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                if await ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout_s:g} s:\n{self.tail(name)}")
            await asyncio.sleep(0.1)

    async def stop_all(self) -> None:
        """SIGTERM every child's process group, newest first; SIGKILL what lingers."""
        for process in reversed(self.processes):
            await self._stop(process)
        self.processes.clear()

    async def stop(self, process: asyncio.subprocess.Process) -> None:
        """Stop one child (its process group) before the others."""
        await self._stop(process)
        self.processes.remove(process)

    @staticmethod
    async def _stop(process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            _LIVE_GROUPS.discard(process.pid)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        with contextlib.suppress(ProcessLookupError):  # the group's stragglers
            os.killpg(process.pid, signal.SIGKILL)
        _LIVE_GROUPS.discard(process.pid)


@contextlib.asynccontextmanager
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """One keep-alive session, no connection limit, no proxies: the client every row shares."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, headers=HEADERS
    ) as http:
        yield http


async def answers(http: aiohttp.ClientSession, url: str) -> bool:
    """GET `url` answers 200."""
    async with http.get(url) as response:
        await response.read()
        return response.status == 200


@dataclass
class Fleet:
    """A running nats-server, a temporary directory and the children started beside them."""

    nats_url: str
    tmp: Path
    children: Children

    async def simulator(self, http: aiohttp.ClientSession, ready_path: str, *options: str) -> str:
        """The runtime simulator at 0 ms latency, ready on `ready_path`; returns its URL."""
        port = free_port()
        process = await self.children.spawn(
            "simulator",
            sys.executable,
            "-m",
            "tools.simulator",
            "--port",
            str(port),
            "--latency-ms",
            "0",
            *options,
        )
        url = f"http://127.0.0.1:{port}"
        await self.children.wait_ready(
            "simulator", process, lambda: answers(http, f"{url}{ready_path}"), 30
        )
        return url

    async def worker(
        self,
        backend_url: str,
        kind: str,
        llm_concurrency: int,
        node_id: str = "bench",
        extra_toml: str = "",
        subject_prefix: str = "",
    ) -> asyncio.subprocess.Process:
        """A node worker with one backend; started, not waited for."""
        config = self.tmp / f"worker-{node_id}.toml"
        config.write_text(
            f'node_id = "{node_id}"\nnats_url = "{self.nats_url}"\n'
            f'subject_prefix = "{subject_prefix}"\n'
            f"[limits]\nllm_concurrency = {llm_concurrency}\n{extra_toml}"
            f'[[backends]]\nkind = "{kind}"\nurl = "{backend_url}"\n'
        )
        name = "worker" if node_id == "bench" else f"worker-{node_id}"
        return await self.python(name, "node_worker", config)

    async def router(
        self,
        http: aiohttp.ClientSession,
        worker: asyncio.subprocess.Process,
        extra_yaml: str = "",
        *,
        name: str = "router",
        code: Path | None = None,
    ) -> tuple[asyncio.subprocess.Process, str]:
        """The router, waited for until it can route to `worker`; returns it and its URL.

        `code`: another checkout of the project to run the router from (a baseline)."""
        port = free_port()
        config = self.tmp / f"{name}.yml"
        config.write_text(
            f"nats_url: {self.nats_url}\nhttp:\n  host: 127.0.0.1\n  port: {port}\n{extra_yaml}"
        )
        router = await self.python(name, "router", config, code=code)
        url = f"http://127.0.0.1:{port}"

        async def routable() -> bool:
            """/ready: NATS connected and a route possible (the worker's record arrived)."""
            if worker.returncode is not None:
                raise RuntimeError(f"worker exited early:\n{self.children.tail('worker')}")
            return await answers(http, f"{url}/ready")

        await self.children.wait_ready(name, router, routable, 60)
        return router, url

    async def router_alone(
        self, http: aiohttp.ClientSession, *, name: str = "router"
    ) -> tuple[asyncio.subprocess.Process, str]:
        """The router with no worker of its own, waited for until its HTTP answers."""
        port = free_port()
        config = self.tmp / f"{name}.yml"
        config.write_text(f"nats_url: {self.nats_url}\nhttp:\n  host: 127.0.0.1\n  port: {port}\n")
        router = await self.python(name, "router", config)
        url = f"http://127.0.0.1:{port}"
        await self.children.wait_ready(name, router, lambda: answers(http, f"{url}/health"), 60)
        return router, url

    async def python(
        self, name: str, module: str, config: Path, *, code: Path | None = None
    ) -> asyncio.subprocess.Process:
        """`python -m module` from this checkout, or from `code` (its packages first on the
        path, so this venv runs another version of the project)."""
        env = None if code is None else {**os.environ, "PYTHONPATH": str(code)}
        return await self.children.spawn(
            name,
            sys.executable,
            "-m",
            module,
            "--config",
            str(config),
            "--log-level",
            "WARNING",
            env=env,
            cwd=code or ROOT,
        )


@contextlib.asynccontextmanager
async def fleet(prefix: str, *, jetstream: bool = False) -> AsyncIterator[Fleet]:
    """A nats-server (with JetStream if asked) and a temporary directory; every child is
    stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp_dir:
        children = Children(Path(tmp_dir))
        nats_group: int | None = None
        store = Path(tmp_dir) / "jetstream" if jetstream else None
        try:
            async with NatsServer(jetstream_dir=store) as server:
                nats_group = server.pid
                if nats_group is not None:
                    _LIVE_GROUPS.add(nats_group)
                try:
                    yield Fleet(server.url, Path(tmp_dir), children)
                finally:
                    await children.stop_all()
        finally:
            if nats_group is not None:  # stopped by NatsServer's exit
                _LIVE_GROUPS.discard(nats_group)


def run_cli(main: Awaitable[None], name: str) -> None:
    """Run `main`; on Ctrl-C or SIGTERM stop every child and exit 130."""
    try:
        run(with_sigterm(main))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\n{name} interrupted; its processes are stopped", file=sys.stderr)
        sys.exit(130)
    finally:
        for group in _LIVE_GROUPS:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


async def with_sigterm(coroutine: Awaitable[None]) -> None:
    """SIGTERM cancels the run like Ctrl-C does, so `finally` stops every child."""
    task = asyncio.ensure_future(coroutine)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await task


# --- profiles -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def profiling(
    children: Children, targets: dict[str, tuple[int, Path]], seconds: float, rate: int
) -> AsyncIterator[None]:
    """py-spy records each `name: (pid, raw file)` for about `seconds` while the body runs."""
    spy = str(Path(sys.executable).parent / "py-spy")
    spies: list[asyncio.subprocess.Process] = []
    for name, (pid, raw) in targets.items():
        argv = [spy, "record", "--nonblocking", "-f", "raw", "-d", f"{math.ceil(seconds)}"]
        argv += ["-r", str(rate), "-p", str(pid), "-o", str(raw)]
        spies.append(await children.spawn(f"py-spy-{name}", *argv))
    if spies:
        await asyncio.sleep(0.5)  # let them attach before the timed phase starts
    yield  # on an error or Ctrl-C, `Children.stop_all` stops them with the rest
    for name, process in zip(targets, spies, strict=True):
        try:
            await asyncio.wait_for(process.wait(), seconds + 20)
        except TimeoutError:
            print(f"py-spy for {name} did not finish:\n{children.tail(f'py-spy-{name}')}")


Frame = tuple[str, str]  # (function, package/module.py)


def read_stacks(raw: Path) -> list[tuple[list[Frame], int]]:
    """py-spy's raw output: each stack (outermost frame first) and its sample count.

    py-spy names frames `function (package/module.py:line)`.
    """
    stacks: list[tuple[list[Frame], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            stacks.append(([_frame(frame) for frame in stack.split(";")], int(count_text)))
    return stacks


def project_functions(
    stacks: list[tuple[list[Frame], int]], entry_points: tuple[str, ...]
) -> dict[str, int]:
    """Samples per project function anywhere on the stack, minus the entry points."""
    project: dict[str, int] = {}
    for frames, count in stacks:
        for function, path in set(frames):
            if path.startswith(PROJECT_CODE) and path not in entry_points:
                where = f"{function} ({path})"
                project[where] = project.get(where, 0) + count
    return project


def print_table(title: str, table: dict[str, int], total: int, top: int) -> None:
    print(f"  {title}")
    for where, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * count / total:6.1f}  {where}")


def _frame(frame: str) -> Frame:
    """`fn (pkg/mod.py:12)` → (`fn`, `pkg/mod.py`)."""
    function, _, where = frame.rpartition(" (")
    return function, where.rstrip(")").rsplit(":", 1)[0]
