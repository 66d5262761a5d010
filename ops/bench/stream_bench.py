"""What streaming through the router costs, measured in one run.

Starts a nats-server, the runtime simulator (0 ms latency, token interval 0), one node
worker in front of it (an OpenAI-compatible backend, so every hop speaks the same SSE the
client reads) and the router, each in its own process, then streams from this process:

  direct  POST /v1/chat/completions, stream → simulator            (the runtime alone)
  NATS    request_stream → NATS → worker → simulator                (the bus leg, no router)
  router  POST /v1/chat/completions, stream → router → NATS → worker → simulator

The two HTTP rows share one aiohttp session and one request body. Two measurements:

  TTFT    at concurrency 1, 64-token streams: from sending the request to the first SSE
          `data:` event carrying content (NATS row: the first chunk), p50 and p99, and
          what the router path adds over the direct row. The same for 1-token streams
          beside it: with a token interval of 0 the runtime sends the whole answer in
          one burst, and a hop that turns the whole burst around before it flushes
          anything delays the first token by the rest of the answer; the 1-token column
          is the hops' latency without that.
  relay   at concurrency 1 and 32, 256-token streams: content chunks received per second
          across all streams, to see which hop limits.

Errors: a failed request, a non-200 answer, an error event, a stream not ending in
`[DONE]` (NATS: not ending in an ok final answer), or a reassembled text that is not the
simulator's deterministic answer of exactly the token count. `--py-spy DIR` records the
router and the worker during the router's c32 phase and summarises where their CPU went.

The machine is shared and noisy: read the differences against the direct row from the
same run, not absolute numbers. Timings are printed, never asserted.
Usage: python ops/bench/stream_bench.py [--seconds 5] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats
from nats.aio.client import Client as NatsClient

from services.bus import wait_for_worker
from services.localnet import free_port
from services.loop import run
from services.nats_server import NatsServer
from services.simulator import expected_text
from services.streaming import StreamLimits, request_stream
from services.subjects import Subjects
from services.wire import Chunk, JobRequest, Message, Params

ROOT = Path(__file__).resolve().parents[2]

MODEL = "llama3.2:3b"  # one of the simulator's default models
PROMPT = "hello there"
TTFT_TOKENS = 64
SHORT_TOKENS = 1
RELAY_TOKENS = 256  # the simulator's setting; TTFT bodies cap it with max_tokens
HEADERS = {"Content-Type": "application/json"}

TARGET_ADDED_TTFT_P50_MS = 3.0
TARGET_CHUNKS_PER_S = 20_000.0
CONCURRENCY = 32
NODE_ID = "bench"
PY_SPY_RATE = 200
# The project's code, minus the entry points every sample passes through.
PROJECT_CODE = ("router/", "services/", "node_worker/")
ENTRY_POINTS = ("router/__main__.py", "node_worker/__main__.py", "services/loop.py")

DIRECT_ROW = "direct: client → simulator"
NATS_ROW = "NATS: request_stream → worker → sim"
ROUTER_ROW = "router: router → NATS → worker → sim"

# Process groups started and not yet reaped: killed on the way out even if the orderly
# stop in `finally` was itself interrupted (a second Ctrl-C).
_LIVE_GROUPS: set[int] = set()


def body(tokens: int) -> bytes:
    payload = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "max_tokens": tokens,
    }
    return json.dumps(payload).encode()


@dataclass
class Received:
    """One stream as the client saw it."""

    ttft_ms: float | None  # None: no content arrived
    chunks: int  # content chunks
    ok: bool


FAILED = Received(None, 0, False)


@dataclass
class Sample:
    streams: list[Received]
    seconds: float

    @property
    def errors(self) -> int:
        return sum(not stream.ok for stream in self.streams)

    @property
    def chunk_rate(self) -> float:
        """Content chunks received per second, across all streams."""
        return sum(stream.chunks for stream in self.streams) / self.seconds

    @property
    def stream_rate(self) -> float:
        return len(self.streams) / self.seconds

    def ttft(self, q: float) -> float:
        ordered = sorted(s.ttft_ms for s in self.streams if s.ttft_ms is not None)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    ttft: Sample
    ttft_short: Sample
    c1: Sample
    c32: Sample

    @property
    def errors(self) -> int:
        return sum(s.errors for s in (self.ttft, self.ttft_short, self.c1, self.c32))


Call = Callable[[int], Awaitable[Received]]


async def measure(call: Call, tokens: int, concurrency: int, seconds: float) -> Sample:
    streams: list[Received] = []
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < stop_at:
            try:
                streams.append(await call(tokens))
            except (aiohttp.ClientError, nats.errors.Error, TimeoutError, ValueError):
                streams.append(FAILED)

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return Sample(streams, time.perf_counter() - started)


async def read_sse(response: aiohttp.ClientResponse, started: float, tokens: int) -> Received:
    """Read an OpenAI chat completion stream to its end; check it against the simulator.

    Reads whatever the socket has and splits events itself (one await per read, not per
    line), so the client stays cheap next to the hops it measures.
    """
    ttft_ms: float | None = None
    pieces: list[str] = []
    done = failed = False
    pending = b""
    async for data in response.content.iter_any():
        pending += data
        *events, pending = pending.split(b"\n\n")
        for event in events:
            if not event.startswith(b"data: "):
                continue
            value = event[6:]
            if value == b"[DONE]":
                done = True
                continue
            chunk = json.loads(value)
            if "error" in chunk:
                failed = True
                continue
            choices = chunk.get("choices") or ()
            content = choices[0].get("delta", {}).get("content") if choices else None
            if content:
                if ttft_ms is None:
                    ttft_ms = (time.perf_counter() - started) * 1000
                pieces.append(content)
    ok = (
        response.status == 200
        and done
        and not failed
        and not pending.strip()
        and len(pieces) == tokens
        and "".join(pieces) == expected_text(MODEL, PROMPT, tokens)
    )
    return Received(ttft_ms, len(pieces), ok)


def http_caller(http: aiohttp.ClientSession, url: str) -> Call:
    bodies = {tokens: body(tokens) for tokens in (SHORT_TOKENS, TTFT_TOKENS, RELAY_TOKENS)}

    async def call(tokens: int) -> Received:
        started = time.perf_counter()
        async with http.post(url, data=bodies[tokens]) as response:
            return await read_sse(response, started, tokens)

    return call


def nats_caller(nc: NatsClient, subject: str) -> Call:
    loop = asyncio.get_running_loop()

    async def call(tokens: int) -> Received:
        job = JobRequest(
            model=MODEL,
            messages=[Message(role="user", content=PROMPT)],
            params=Params(max_tokens=tokens),
            stream=True,
        )
        limits = StreamLimits(first_token_s=10, idle_s=10, deadline_s=loop.time() + 30)
        started = time.perf_counter()
        ttft_ms: float | None = None
        pieces: list[str] = []
        ok = False
        async for event, failure in request_stream(nc, subject, job, limits):
            if isinstance(event, Chunk):
                if ttft_ms is None:
                    ttft_ms = (time.perf_counter() - started) * 1000
                pieces.append(event.delta)
            else:
                ok = failure is None and event.status == "ok"
        ok = (
            ok and len(pieces) == tokens and "".join(pieces) == expected_text(MODEL, PROMPT, tokens)
        )
        return Received(ttft_ms, len(pieces), ok)

    return call


class Children:
    """The benchmark's child processes, each in its own session; all stopped on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: list[asyncio.subprocess.Process] = []

    async def spawn(self, name: str, *argv: str) -> asyncio.subprocess.Process:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=ROOT,
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
                _LIVE_GROUPS.discard(process.pid)
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


@dataclass
class Profiles:
    """py-spy's raw stacks per profiled process, once recorded."""

    files: dict[str, Path] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def profiling(
    children: Children, pids: dict[str, int], out: Path | None, seconds: float, into: Profiles
) -> AsyncIterator[None]:
    """py-spy records each process for about `seconds` while the body runs, when asked to."""
    if out is None:
        yield
        return
    spy = str(Path(sys.executable).parent / "py-spy")
    spies: list[asyncio.subprocess.Process] = []
    for name, pid in pids.items():
        raw = out / f"{name}.raw"
        argv = [spy, "record", "--nonblocking", "-f", "raw", "-d", f"{math.ceil(seconds)}"]
        argv += ["-r", str(PY_SPY_RATE), "-p", str(pid), "-o", str(raw)]
        spies.append(await children.spawn(f"py-spy-{name}", *argv))
        into.files[name] = raw
    await asyncio.sleep(0.5)  # let them attach before the timed phase starts
    yield  # on an error or Ctrl-C, `Children.stop_all` stops them with the rest
    for name, process in zip(pids, spies, strict=True):
        try:
            await asyncio.wait_for(process.wait(), seconds + 20)
        except TimeoutError:
            print(f"py-spy for {name} did not finish:\n{children.tail(f'py-spy-{name}')}")


def summarize_profile(name: str, raw: Path, chunks: int, top: int = 8) -> None:
    """Where a process's CPU went during the router's c32 phase, from py-spy's raw stacks.

    py-spy names frames `function (package/module.py:line)`; a sample whose innermost
    Python frame is the runner's `run` was in uvloop's C code (socket I/O, scheduling).
    """
    if not raw.exists():
        print(f"\npy-spy wrote no profile for the {name} to {raw}")
        return
    by_package: dict[str, int] = {}
    by_function: dict[str, int] = {}
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
        if function.endswith("run") and path.endswith("asyncio/runners.py"):
            package = function = "uvloop (C: socket I/O, callbacks)"
        else:
            function = f"{function} ({path})"
        by_package[package] = by_package.get(package, 0) + count
        by_function[function] = by_function.get(function, 0) + count
        for function, path in {_frame(frame) for frame in frames}:
            if path.startswith(PROJECT_CODE) and path not in ENTRY_POINTS:
                where = f"{function} ({path})"
                project[where] = project.get(where, 0) + count
    if not total:
        print(f"\npy-spy recorded no busy samples in the {name}")
        return
    busy_s = total / PY_SPY_RATE
    print(
        f"\n{name} CPU during the router c{CONCURRENCY} phase (py-spy, {PY_SPY_RATE} Hz, {raw}):"
        f" {total} busy samples ≈ {busy_s:.2f} s"
        f" ≈ {1e6 * busy_s / max(chunks, 1):.1f} µs per relayed chunk"
    )
    for title, table in (
        ("self %  innermost frame's package", by_package),
        ("self %  innermost function", by_function),
        ("incl %  project function", project),
    ):
        print(f"  {title}")
        for where, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {100 * count / total:6.1f}  {where}")


def _frame(frame: str) -> tuple[str, str]:
    """`fn (pkg/mod.py:12)` → (`fn`, `pkg/mod.py`)."""
    function, _, where = frame.rpartition(" (")
    return function, where.rstrip(")").rsplit(":", 1)[0]


async def main(seconds: float, py_spy: Path | None) -> None:
    results: dict[str, Row] = {}
    profiles = Profiles()
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        children = Children(tmp)
        nats_group: int | None = None
        try:
            async with NatsServer() as server:
                nats_group = server.pid
                if nats_group is not None:
                    _LIVE_GROUPS.add(nats_group)
                try:
                    await run_bench(server.url, tmp, children, seconds, results, py_spy, profiles)
                finally:
                    await children.stop_all()
        finally:
            if nats_group is not None:  # stopped by NatsServer's exit
                _LIVE_GROUPS.discard(nats_group)
    report(seconds, results)
    for name, raw in profiles.files.items():
        router_c32 = results[ROUTER_ROW].c32
        summarize_profile(name, raw, sum(stream.chunks for stream in router_c32.streams))


def report(seconds: float, results: dict[str, Row]) -> None:
    print(f"\nstream benchmark, {seconds:g} s per measurement, {os.cpu_count()} cores")
    print(
        "simulator: latency 0 ms, token interval 0 ms; "
        f"TTFT streams {TTFT_TOKENS} tokens, relay streams {RELAY_TOKENS} tokens\n"
    )
    short = f"{SHORT_TOKENS}-token"
    print(
        f"{'time to first token, c1':<40} {f'{TTFT_TOKENS}-token p50':>14} {'p99':>9} "
        f"{f'{short} p50':>13} {'p99':>9} {'streams':>8} {'errors':>6}"
    )
    for name, row in results.items():
        long_, short_ = row.ttft, row.ttft_short
        print(
            f"{name:<40} {long_.ttft(0.5):11.3f} ms {long_.ttft(0.99):6.3f} ms "
            f"{short_.ttft(0.5):10.3f} ms {short_.ttft(0.99):6.3f} ms "
            f"{len(long_.streams) + len(short_.streams):8d} {long_.errors + short_.errors:6d}"
        )
    direct = results[DIRECT_ROW]
    print()
    for label, name in (("NATS leg", NATS_ROW), ("router path", ROUTER_ROW)):
        row = results[name]
        added_p50 = row.ttft.ttft(0.5) - direct.ttft.ttft(0.5)
        added_p99 = row.ttft.ttft(0.99) - direct.ttft.ttft(0.99)
        short_p50 = row.ttft_short.ttft(0.5) - direct.ttft_short.ttft(0.5)
        short_p99 = row.ttft_short.ttft(0.99) - direct.ttft_short.ttft(0.99)
        print(
            f"added TTFT, {label:<12} p50 {added_p50:+.3f} ms, p99 {added_p99:+.3f} ms "
            f"({short}: p50 {short_p50:+.3f} ms, p99 {short_p99:+.3f} ms)"
        )
    router = results[ROUTER_ROW]
    added_p50 = router.ttft.ttft(0.5) - direct.ttft.ttft(0.5)
    met = added_p50 <= TARGET_ADDED_TTFT_P50_MS
    print(
        f"router TTFT: added {added_p50:+.3f} ms at p50 ({TTFT_TOKENS}-token streams)  "
        f"(target ≤ {TARGET_ADDED_TTFT_P50_MS:g} ms: {'met' if met else 'missed'})"
    )
    print(
        f"\n{'relayed content chunks/s':<40} {'c1':>9} {f'c{CONCURRENCY}':>9} "
        f"{f'c{CONCURRENCY} streams/s':>14} {'errors (all phases)':>19}"
    )
    for name, row in results.items():
        print(
            f"{name:<40} {row.c1.chunk_rate:9.0f} {row.c32.chunk_rate:9.0f} "
            f"{row.c32.stream_rate:14.1f} {row.errors:19d}"
        )
    met = router.c32.chunk_rate >= TARGET_CHUNKS_PER_S and router.errors == 0
    print(
        f"\nrouter c{CONCURRENCY}: {router.c32.chunk_rate:,.0f} chunks/s, errors {router.errors}  "
        f"(target ≥ {TARGET_CHUNKS_PER_S:,.0f} chunks/s, 0 errors: {'met' if met else 'missed'})"
    )


async def run_bench(
    nats_url: str,
    tmp: Path,
    children: Children,
    seconds: float,
    results: dict[str, Row],
    py_spy: Path | None,
    profiles: Profiles,
) -> None:
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
        str(RELAY_TOKENS),
        "--token-interval-ms",
        "0",
    )
    worker_toml = tmp / "worker.toml"
    worker_toml.write_text(
        f'node_id = "{NODE_ID}"\nnats_url = "{nats_url}"\n'
        "[limits]\nllm_concurrency = 256\n"
        f'[[backends]]\nkind = "openai"\nurl = "http://127.0.0.1:{sim_port}"\n'
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
            "simulator", simulator, lambda: answers(f"{sim_url}/v1/models"), 30
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

        nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)
        try:
            subject = Subjects().job(NODE_ID, "llm")
            await wait_for_worker(nc, subject)
            calls = {
                DIRECT_ROW: http_caller(http, f"{sim_url}/v1/chat/completions"),
                NATS_ROW: nats_caller(nc, subject),
                ROUTER_ROW: http_caller(http, f"{router_url}/v1/chat/completions"),
            }
            for name, call in calls.items():  # every row must work before it is timed
                for tokens in (SHORT_TOKENS, TTFT_TOKENS, RELAY_TOKENS):
                    received = await call(tokens)
                    if not received.ok:
                        raise RuntimeError(
                            f"{name}: the first {tokens}-token stream failed ({received})\n"
                            f"worker:\n{children.tail('worker')}\n"
                            f"router:\n{children.tail('router')}"
                        )
            for call in calls.values():  # warm-up: connections, caches, JITs of the children
                await measure(call, TTFT_TOKENS, 1, 0.5)
                await measure(call, RELAY_TOKENS, CONCURRENCY, 1.0)
            for name, call in calls.items():
                ttft = await measure(call, TTFT_TOKENS, 1, seconds)
                ttft_short = await measure(call, SHORT_TOKENS, 1, seconds)
                c1 = await measure(call, RELAY_TOKENS, 1, seconds)
                if name == ROUTER_ROW:
                    pids = {"router": router.pid, "worker": worker.pid}
                    async with profiling(children, pids, py_spy, seconds, profiles):
                        c32 = await measure(call, RELAY_TOKENS, CONCURRENCY, seconds)
                else:
                    c32 = await measure(call, RELAY_TOKENS, CONCURRENCY, seconds)
                results[name] = Row(ttft, ttft_short, c1, c32)
        finally:
            await nc.close()


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (5)")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help=f"record the router and the worker with py-spy during the router c{CONCURRENCY} "
        "phase; raw stacks to DIR/router.raw and DIR/worker.raw",
    )
    args = parser.parse_args()
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    try:
        run(with_sigterm(main(args.seconds, args.py_spy)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nstream bench interrupted; its processes are stopped", file=sys.stderr)
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
