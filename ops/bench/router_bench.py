"""What the router costs on top of the runtime, measured in one run.

Starts a nats-server, the runtime simulator (0 ms latency, 16 tokens), one node worker in
front of it and the router, each in its own process, then measures from this process,
with one shared aiohttp session for every row:

  floor  POST /v1/chat/completions → simulator                       (the runtime alone)
  path   POST /v1/chat/completions → router → NATS → worker → simulator

at concurrency 1 (p50/p99 latency) and at concurrency 64 (req/s, p99, errors = non-200
answers or failed requests). When LiteLLM's proxy can be started (`--litellm PATH`, the
`LITELLM_BIN` environment variable, or a `litellm` importable here), the same rows go
through it too, routed to the same simulator, for a side-by-side comparison. LiteLLM is
not a project dependency; try it from a throwaway venv:

  python3.11 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'
  python ops/bench/router_bench.py --litellm /tmp/litellm-venv/bin/litellm

The machine is shared and noisy: read the differences against the floor from the same
run, not absolute numbers. Timings are printed, never asserted.
Usage: python ops/bench/router_bench.py [--seconds 5] [--litellm PATH] [--py-spy FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.localnet import free_port
from services.loop import run
from services.nats_server import NatsServer

ROOT = Path(__file__).resolve().parents[2]

MODEL = "llama3.2:3b"  # one of the simulator's default models
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}
).encode()
HEADERS = {"Content-Type": "application/json"}

TARGET_ADDED_P50_MS = 2.0
TARGET_RATE = 1000.0
CONCURRENCY = 64
PY_SPY_RATE = 500
# The router's and shared code, minus the entry points every sample passes through.
PROJECT_CODE = ("router/", "services/", "node_worker/")
ENTRY_POINTS = ("router/__main__.py", "services/loop.py")

FLOOR_ROW = "floor: client → simulator"
PATH_ROW = "path: router → NATS → worker → sim"
LITELLM_ROW = "LiteLLM: proxy → simulator"

# Process groups started and not yet reaped: killed on the way out even if the orderly
# stop in `finally` was itself interrupted (a second Ctrl-C).
_LIVE_GROUPS: set[int] = set()


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
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float) -> Sample:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                ok = await call()
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            errors += not ok

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return Sample(latencies, errors, time.perf_counter() - started)


class Children:
    """The benchmark's child processes, each in its own session; all stopped on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: list[asyncio.subprocess.Process] = []

    async def spawn(
        self, name: str, *argv: str, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=ROOT,
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
            if process.returncode is not None:
                continue
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
        self.processes.clear()


def find_litellm(option: str | None) -> tuple[list[str] | None, str]:
    """How to start LiteLLM's proxy, or None and why not."""
    explicit = option or os.environ.get("LITELLM_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            return None, f"{explicit} is not an executable"
        return [explicit], explicit
    if importlib.util.find_spec("litellm") is None:
        return None, (
            "litellm is not importable here (not a project dependency); "
            "pass --litellm PATH or set LITELLM_BIN to a litellm executable"
        )
    beside = Path(sys.executable).parent / "litellm"
    if beside.exists():
        return [str(beside)], str(beside)
    found = shutil.which("litellm")
    if found is None:
        return None, "litellm is importable but its `litellm` command is not installed"
    return [found], found


def litellm_env() -> dict[str, str]:
    """No master key, no phoning home: a loopback proxy with nothing but the model list."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    env.pop("DATABASE_URL", None)
    env |= {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # do not fetch the price list at start
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    return env


@contextlib.asynccontextmanager
async def profiling(router_pid: int, out: Path | None, seconds: float) -> AsyncIterator[None]:
    """py-spy records the router for `seconds` while the body runs, when asked to."""
    if out is None:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    argv = [str(spy), "record", "--pid", str(router_pid), "--duration", f"{seconds:.0f}"]
    argv += ["--rate", str(PY_SPY_RATE), "--format", "raw", "--output", str(out), "--nonblocking"]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await asyncio.sleep(0.3)  # let it attach before the timed phase starts
        yield
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), seconds + 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def summarize_profile(raw: Path, c1: Sample, top: int = 10) -> None:
    """Where the router's CPU went during the c1 path phase, from py-spy's raw stacks.

    py-spy names frames `function (package/module.py:line)`; a sample whose innermost
    Python frame is the runner's `run` was in uvloop's C code (socket I/O, scheduling).
    """
    if not raw.exists():
        print(f"\npy-spy wrote no profile to {raw}")
        return
    by_package: dict[str, int] = {}
    project: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        function, path = _frame(frames[-1])
        package = path.split("/", 1)[0]
        if function == "Runner.run":
            package = "uvloop (C: socket I/O, callbacks)"
        by_package[package] = by_package.get(package, 0) + count
        for function, path in {_frame(frame) for frame in frames}:
            if path.startswith(PROJECT_CODE) and path not in ENTRY_POINTS:
                name = f"{function} ({path})"
                project[name] = project.get(name, 0) + count
    if not total:
        print("\npy-spy recorded no busy samples")
        return
    busy_s = total / PY_SPY_RATE
    answered = len(c1.latencies_ms)
    print(
        f"\nrouter CPU during the c1 path phase (py-spy, {PY_SPY_RATE} Hz, raw stacks in {raw}):"
        f" {total} busy samples ≈ {busy_s:.2f} s over {answered} requests"
        f" ≈ {1000 * busy_s / max(answered, 1):.3f} ms per request"
    )
    print("  self %  where (innermost frame's package)")
    for package, count in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * count / total:6.1f}  {package}")
    print("  incl %  project function")
    for name, count in sorted(project.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * count / total:6.1f}  {name}")


def _frame(frame: str) -> tuple[str, str]:
    """`fn (pkg/mod.py:12)` → (`fn`, `pkg/mod.py`)."""
    function, _, where = frame.rpartition(" (")
    return function, where.rstrip(")").rsplit(":", 1)[0]


async def main(seconds: float, litellm: str | None, py_spy: Path | None) -> None:
    litellm_argv, litellm_note = find_litellm(litellm)
    results: dict[str, tuple[Sample, Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        children = Children(tmp)
        nats_group: int | None = None
        try:
            async with NatsServer() as server:
                nats_group = server.pid
                if nats_group is not None:
                    _LIVE_GROUPS.add(nats_group)
                try:
                    skipped = await run_bench(
                        server.url, tmp, children, litellm_argv, seconds, results, py_spy
                    )
                    litellm_note = skipped or litellm_note
                finally:
                    await children.stop_all()
        finally:
            if nats_group is not None:  # stopped by NatsServer's exit
                _LIVE_GROUPS.discard(nats_group)

    print(f"\nrouter benchmark, {seconds:g} s per measurement, {os.cpu_count()} cores")
    print(f"body: {BODY.decode()}\n")
    print(
        f"{'':<38} {'c1 p50':>9} {'c1 p99':>9} | {'c64 req/s':>9} {'c64 p50':>9} "
        f"{'c64 p99':>9} {'errors (c1+c64)':>15}"
    )
    for name, (c1, c64) in results.items():
        print(
            f"{name:<38} {c1.pct(0.5):6.3f} ms {c1.pct(0.99):6.3f} ms | {c64.rate:9.0f} "
            f"{c64.pct(0.5):6.2f} ms {c64.pct(0.99):6.2f} ms {c1.errors + c64.errors:15d}"
        )
    floor_c1, _ = results[FLOOR_ROW]
    print()
    for label, name in (("inferbus router", PATH_ROW), ("LiteLLM proxy", LITELLM_ROW)):
        if name not in results:
            continue
        c1, c64 = results[name]
        added_p50 = c1.pct(0.5) - floor_c1.pct(0.5)
        added_p99 = c1.pct(0.99) - floor_c1.pct(0.99)
        print(
            f"{label:<16} added at c1: p50 {added_p50:+.3f} ms, p99 {added_p99:+.3f} ms  "
            f"(target p50 ≤ {TARGET_ADDED_P50_MS:g} ms: "
            f"{'met' if added_p50 <= TARGET_ADDED_P50_MS else 'missed'})"
        )
        met = c64.rate >= TARGET_RATE and c64.errors == 0
        print(
            f"{label:<16} c{CONCURRENCY}: {c64.rate:.0f} req/s, errors {c64.errors}  "
            f"(target ≥ {TARGET_RATE:,.0f} req/s, 0 errors: {'met' if met else 'missed'})"
        )
    if LITELLM_ROW not in results:
        print(f"LiteLLM rows skipped: {litellm_note}")
    if py_spy is not None:
        summarize_profile(py_spy, results[PATH_ROW][0])


async def run_bench(
    nats_url: str,
    tmp: Path,
    children: Children,
    litellm_argv: list[str] | None,
    seconds: float,
    results: dict[str, tuple[Sample, Sample]],
    py_spy: Path | None,
) -> str | None:
    """Fill `results`; returns why the LiteLLM rows were skipped after all, if they were."""
    sim_port, router_port = free_port(), free_port()
    simulator = await children.spawn(
        "simulator",
        sys.executable,
        "-m",
        "services.simulator",
        "--port",
        str(sim_port),
        "--latency-ms",
        "0",
        "--tokens",
        "16",
    )
    worker_toml = tmp / "worker.toml"
    worker_toml.write_text(
        f'node_id = "bench"\nnats_url = "{nats_url}"\n'
        "[limits]\nllm_concurrency = 256\n"
        f'[[backends]]\nkind = "ollama"\nurl = "http://127.0.0.1:{sim_port}"\n'
    )
    router_yml = tmp / "router.yml"
    router_yml.write_text(
        f"nats_url: {nats_url}\nhttp:\n  host: 127.0.0.1\n  port: {router_port}\n"
    )
    connector = aiohttp.TCPConnector(limit=0, force_close=False, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, headers=HEADERS
    ) as http:

        async def answers(url: str) -> bool:
            async with http.get(url) as response:
                await response.read()
                return response.status == 200

        sim_url = f"http://127.0.0.1:{sim_port}"
        await children.wait_ready(
            "simulator", simulator, lambda: answers(f"{sim_url}/api/tags"), 30
        )
        worker = await children.spawn(
            "worker",
            sys.executable,
            "-m",
            "node_worker",
            "--config",
            str(worker_toml),
            "--log-level",
            "WARNING",
        )
        router = await children.spawn(
            "router",
            sys.executable,
            "-m",
            "router",
            "--config",
            str(router_yml),
            "--log-level",
            "WARNING",
        )
        router_url = f"http://127.0.0.1:{router_port}"

        async def routable() -> bool:
            """/ready: NATS connected and a route possible (the worker's record arrived)."""
            if worker.returncode is not None:
                raise RuntimeError(f"worker exited early:\n{children.tail('worker')}")
            return await answers(f"{router_url}/ready")

        await children.wait_ready("router", router, routable, 60)

        targets = {
            FLOOR_ROW: f"{sim_url}/v1/chat/completions",
            PATH_ROW: f"{router_url}/v1/chat/completions",
        }
        litellm_skipped: str | None = None
        if litellm_argv is not None:
            try:
                litellm_url = await start_litellm(children, litellm_argv, tmp, sim_url, answers)
                targets[LITELLM_ROW] = f"{litellm_url}/v1/chat/completions"
            except RuntimeError as error:
                print(f"LiteLLM proxy failed: {error}", file=sys.stderr)
                litellm_skipped = f"the LiteLLM proxy did not start ({first_line(error)})"

        def caller(url: str) -> Callable[[], Awaitable[bool]]:
            async def call() -> bool:
                async with http.post(url, data=BODY) as response:
                    await response.read()
                    return response.status == 200

            return call

        calls = {name: caller(url) for name, url in targets.items()}
        for name, call in list(calls.items()):  # every row must work before it is timed
            try:
                ok = await call()
            except (aiohttp.ClientError, TimeoutError) as error:
                ok, why = False, repr(error)
            else:
                why = "non-200 answer"
            if not ok and name == LITELLM_ROW:
                print(f"LiteLLM proxy failed:\n{children.tail('litellm')}", file=sys.stderr)
                litellm_skipped = f"the first request through the LiteLLM proxy failed ({why})"
                del calls[name]
            elif not ok:
                raise RuntimeError(f"{name}: the first request failed ({why})")
        for call in calls.values():  # warm-up: connections, caches, JITs of the children
            await measure(call, 1, 0.5)
            await measure(call, CONCURRENCY, 1.0)
        for name, call in calls.items():
            if name == PATH_ROW:
                async with profiling(router.pid, py_spy, seconds):
                    c1 = await measure(call, 1, seconds)
            else:
                c1 = await measure(call, 1, seconds)
            results[name] = (c1, await measure(call, CONCURRENCY, seconds))
    return litellm_skipped


async def start_litellm(
    children: Children,
    argv: list[str],
    tmp: Path,
    sim_url: str,
    answers: Callable[[str], Awaitable[bool]],
) -> str:
    """LiteLLM's proxy routing MODEL to the simulator's OpenAI API; returns its URL.

    No master key (recent LiteLLM refuses to start without one unless told this is local
    development, which a loopback benchmark is), no database, no price-list download.
    """
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f'  - model_name: "{MODEL}"\n'
        "    litellm_params:\n"
        f'      model: "openai/{MODEL}"\n'
        f'      api_base: "{sim_url}/v1"\n'
        '      api_key: "dummy"\n'
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        "  dangerously_permit_weak_or_unset_master_key: true\n"
    )
    proxy = await children.spawn(
        "litellm",
        *argv,
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=litellm_env(),
    )
    url = f"http://127.0.0.1:{port}"
    await children.wait_ready("litellm", proxy, lambda: answers(f"{url}/health/liveliness"), 180)
    return url


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (5)")
    parser.add_argument(
        "--litellm",
        metavar="PATH",
        help="LiteLLM's `litellm` executable, e.g. from a throwaway venv (or LITELLM_BIN)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="record the router with py-spy during the c1 path phase; raw stacks to FILE",
    )
    args = parser.parse_args()
    try:
        run(with_sigterm(main(args.seconds, args.litellm, args.py_spy)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nrouter bench interrupted; its processes are stopped", file=sys.stderr)
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


if __name__ == "__main__":
    cli()
