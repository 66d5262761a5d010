"""What a request costs from the HTTP edge to the runtime and back, on one core.

The stack under test (nats-server, one node worker, the router) is pinned to CPU 0; the
load generator (this process) and a fast fake OpenAI upstream are pinned to CPU 1, so
what the stack costs is what one core can give it. Figures, each against calling the
upstream directly from the same client:

  c1 added p50 / p99   POST /v1/chat/completions through the router, one at a time
  c32 req/s            32 concurrent callers
  CPU ms / req at c32  utime + stime of nats-server, worker and router (/proc/<pid>/stat)
                       over the c32 phase, divided by the answers
  TTFT added at c1     a streamed request: time to the first content chunk
  worker c64 jobs/s    NATS request/reply straight to the worker (no router), 64 at once

With `--baseline DIR` (a git worktree of another commit with its own `.venv`, such as
/work/wt/base) a second stack runs that tree's code beside this one, on the same core, the
same nats-server binary and the same upstream; the two are measured ABBA (this, baseline,
baseline, this; `--rounds` pairs) and each figure is the mean over its rounds. With
`LITELLM_BIN` (or `--litellm PATH`) LiteLLM's proxy runs on CPU 0 too, in front of the
same upstream, and gets the same rows.

The box is shared: read ratios within one run, not absolute numbers. Timings are
printed, never asserted. `--record` adds the run's rows to the whole-path table in
ops/bench/RESULTS.md.

`--worker-only` measures the worker columns alone (quick ABBA rounds for worker changes).

Usage: python ops/bench/whole_path_bench.py [--seconds 4] [--rounds 1] [--baseline DIR]
       [--litellm PATH] [--record] [--worker-only]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import harness
import nats
from harness import Children, Sample, measure
from nats.aio.msg import Msg
from router_bench import MODEL, find_litellm, start_litellm

from services.localnet import free_port
from services.loop import run
from services.nats_server import NatsServer

# The first two CPUs this process may use: the stack's and the load's.
_CPUS = sorted(os.sched_getaffinity(0))
STACK_CPU = _CPUS[0]
LOAD_CPU = _CPUS[1] if len(_CPUS) > 1 else _CPUS[0]
CONCURRENCY = 32
WORKER_CONCURRENCY = 64
MESSAGES = [{"role": "user", "content": "hello there"}]
BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16}).encode()
STREAM_BODY = json.dumps(
    {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True}
).encode()
JOB = json.dumps({"model": MODEL, "messages": MESSAGES, "params": {"max_tokens": 16}}).encode()
STREAM_JOB = json.dumps(
    {"model": MODEL, "messages": MESSAGES, "params": {"max_tokens": 16}, "stream": True}
).encode()
RESULTS = Path(__file__).with_name("RESULTS.md")
ROWS_MARKER = "<!-- whole_path_bench rows go above this line -->"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Targets of the whole path on one core (c1 added p50/p99, CPU per request, req/s, TTFT).
TARGETS = {"added_p50": 1.5, "added_p99": 3.0, "cpu_ms": 1.2, "rate": 800.0, "ttft": 2.0}


# --- the fake upstream ----------------------------------------------------------------

_MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
_ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi " * 16},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19},
    }
).encode()


def _sse(delta: dict[str, object], finish: str | None = None, usage: bool = False) -> bytes:
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


_STREAM = (
    _sse({"role": "assistant", "content": ""})
    + b"".join(_sse({"content": "hi "}) for _ in range(16))
    + _sse({}, "stop", usage=True)
    + b"data: [DONE]\n\n"
)


def _response(body: bytes, content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: keep-alive\r\n\r\n"
        + body
    )


class FakeUpstream(asyncio.Protocol):
    """An OpenAI-compatible server that answers at once: /v1/models and chat completions
    (JSON, or SSE when the body asks to stream), keep-alive, nothing else parsed."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)  # uvloop's own class

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body, self.buffer = self.buffer[head_end + 4 : end], self.buffer[end:]
            assert self.transport is not None
            self.transport.write(self.answer(head.split(b" ", 2)[1], body))

    @staticmethod
    def answer(path: bytes, body: bytes) -> bytes:
        if path.startswith(b"/v1/models"):
            return _response(_MODELS, b"application/json")
        if b'"stream":true' in body.replace(b" ", b""):
            return _response(_STREAM, b"text/event-stream")
        return _response(_ANSWER, b"application/json")


async def serve_upstream(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(FakeUpstream, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# --- the stacks -----------------------------------------------------------------------


@dataclass
class Stack:
    """nats-server, a worker and a router of one tree, all on the stack's CPU."""

    name: str
    url: str
    nats_url: str
    pids: dict[str, int]


@dataclass
class Figures:
    c1: list[Sample] = field(default_factory=list)
    c32: list[Sample] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    cpu_ms_of: dict[str, list[float]] = field(default_factory=dict)  # by process
    ttft_ms: list[float] = field(default_factory=list)
    worker_rate: list[float] = field(default_factory=list)
    stream_rate: list[float] = field(default_factory=list)
    stream_cpu_ms: list[float] = field(default_factory=list)
    first_chunk_ms: list[float] = field(default_factory=list)
    worker_cpu_ms: list[float] = field(default_factory=list)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def start_stack(
    children: Children,
    http: aiohttp.ClientSession,
    tree: Path,
    name: str,
    nats_server: NatsServer,
    upstream_url: str,
    tmp: Path,
) -> Stack:
    python = str(tree / ".venv" / "bin" / "python")
    worker_config = tmp / f"worker-{name}.toml"
    worker_config.write_text(
        f'node_id = "bench"\nnats_url = "{nats_server.url}"\n'
        f"[limits]\nllm_concurrency = 256\n"
        f'[[backends]]\nkind = "openai"\nurl = "{upstream_url}"\n'
    )
    port = free_port()
    router_config = tmp / f"router-{name}.yml"
    router_config.write_text(
        f"nats_url: {nats_server.url}\nhttp:\n  host: 127.0.0.1\n  port: {port}\n"
    )
    quiet = ("--log-level", "WARNING")
    worker = await children.spawn(
        f"worker-{name}",
        python,
        "-m",
        "node_worker",
        "--config",
        str(worker_config),
        *quiet,
        cwd=tree,
    )
    router = await children.spawn(
        f"router-{name}",
        python,
        "-m",
        "router",
        "--config",
        str(router_config),
        *quiet,
        cwd=tree,
    )
    url = f"http://127.0.0.1:{port}"

    async def routable() -> bool:
        if worker.returncode is not None:
            raise RuntimeError(f"worker exited early:\n{children.tail(f'worker-{name}')}")
        return await harness.answers(http, f"{url}/ready")

    await children.wait_ready(f"router-{name}", router, routable, 90)
    assert nats_server.pid is not None
    pids = {"nats-server": nats_server.pid, "worker": worker.pid, "router": router.pid}
    return Stack(name, url, nats_server.url, pids)


# --- the calls ------------------------------------------------------------------------


def poster(http: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[bool]]:
    async def call() -> bool:
        async with http.post(url, data=BODY) as response:
            await response.read()
            return response.status == 200

    return call


async def first_token_ms(http: aiohttp.ClientSession, url: str, seconds: float) -> float:
    """Median time to the first content chunk of a streamed request, one at a time."""
    times: list[float] = []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        first: float | None = None
        async with http.post(url, data=STREAM_BODY) as response:
            async for line in response.content:
                if first is None and b'"content":"hi' in line.replace(b" ", b""):
                    first = time.perf_counter()
        if response.status == 200 and first is not None:
            times.append((first - started) * 1000)
    return harness.percentile(times, 0.5)


async def worker_stream_rate(nats_url: str, worker_pid: int, seconds: float) -> tuple[float, float]:
    """Streamed jobs per second at c64 straight to the worker (16 pieces each, then the
    final answer), and the worker's CPU ms per job."""
    connection = await nats.connect(nats_url)
    waiting: dict[str, asyncio.Future[None]] = {}

    async def on_reply(msg: Msg) -> None:
        if b'"done"' in msg.data:
            found = waiting.pop(msg.subject, None)
            if found is not None and not found.done():
                found.set_result(None)

    await connection.subscribe("bench.streams.*", cb=on_reply)
    counter = 0

    async def step() -> bool:
        nonlocal counter
        counter += 1
        inbox = f"bench.streams.{counter}"
        waiting[inbox] = asyncio.get_running_loop().create_future()
        await connection.publish("node.bench.llm.request", STREAM_JOB, reply=inbox)
        await asyncio.wait_for(waiting[inbox], 10)
        return True

    try:
        return await rate_and_cpu(step, warmup=20, pid=worker_pid, seconds=seconds)
    finally:
        await connection.close()


async def worker_first_chunk_ms(nats_url: str, seconds: float) -> float:
    """Median time from sending a streamed job straight to the worker to its first chunk,
    one at a time (the worker's part of a stream's time to first token)."""
    connection = await nats.connect(nats_url)
    first: asyncio.Future[float] | None = None
    done: asyncio.Future[None] | None = None
    inbox = ""

    async def on_chunk(msg: Msg) -> None:
        if first is None or done is None or msg.subject != inbox:
            return
        if not first.done():
            first.set_result(time.perf_counter())
        if b'"done"' in msg.data and not done.done():
            done.set_result(None)

    await connection.subscribe("bench.first.>", cb=on_chunk)
    times: list[float] = []
    try:
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            first = asyncio.get_running_loop().create_future()
            done = asyncio.get_running_loop().create_future()
            inbox = f"bench.first.{len(times)}"
            started = time.perf_counter()
            await connection.publish("node.bench.llm.request", STREAM_JOB, reply=inbox)
            times.append((await asyncio.wait_for(first, 10) - started) * 1000)
            await asyncio.wait_for(done, 10)  # the whole stream, before the next
    finally:
        await connection.close()
    return harness.percentile(times[5:], 0.5)


async def worker_rate(nats_url: str, worker_pid: int, seconds: float) -> tuple[float, float]:
    """Jobs per second at c64 straight to the worker over NATS (answers with status ok),
    and the worker's CPU ms per job."""
    connection = await nats.connect(nats_url)

    async def step() -> bool:
        reply = await connection.request("node.bench.llm.request", JOB, timeout=10)
        return b'"status":"ok"' in reply.data.replace(b" ", b"")

    try:
        return await rate_and_cpu(step, warmup=50, pid=worker_pid, seconds=seconds)
    finally:
        await connection.close()


async def rate_and_cpu(
    step: Callable[[], Awaitable[bool]], *, warmup: int, pid: int, seconds: float
) -> tuple[float, float]:
    """`step` at c64 for `seconds` after `warmup` runs: good steps per second, and the
    CPU ms per good step of process `pid`."""
    for _ in range(warmup):
        await step()
    ok = 0

    async def counted() -> None:
        nonlocal ok
        good = await step()  # not `ok += await ...`: that reads `ok` before the await
        ok += good

    before = cpu_seconds(pid)
    took = await harness.for_seconds(counted, WORKER_CONCURRENCY, seconds)
    spent = cpu_seconds(pid) - before
    return ok / took, 1000 * spent / max(ok, 1)


async def measure_path(
    http: aiohttp.ClientSession,
    url: str,
    pids: dict[str, int],
    seconds: float,
    into: Figures,
    spy: tuple[Children, Path] | None = None,
) -> None:
    """c1, c32 (with the stack's CPU) and TTFT; py-spy records router and worker during
    the c32 phase when `spy` says where (the CPU figure then includes py-spy's pauses)."""
    chat = f"{url}/v1/chat/completions"
    call = poster(http, chat)
    await measure(call, 1, 0.5)
    await measure(call, CONCURRENCY, 0.5)
    into.c1.append(await measure(call, 1, seconds))
    targets = {}
    if spy is not None:
        targets = {name: (pids[name], spy[1] / f"{name}.raw") for name in ("router", "worker")}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    async with harness.profiling(spy[0] if spy else Children(Path()), targets, seconds, 250):
        c32 = await measure(call, CONCURRENCY, seconds)
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    into.c32.append(c32)
    if pids:
        answered = max(len(c32.latencies_ms) - c32.errors, 1)
        into.cpu_ms.append(1000 * sum(spent.values()) / answered)
        for name, seconds in spent.items():
            into.cpu_ms_of.setdefault(name, []).append(1000 * seconds / answered)
    into.ttft_ms.append(await first_token_ms(http, chat, seconds / 2))


def print_profiles(folder: Path) -> None:
    """Where router and worker spent their samples during the profiled c32 phase."""
    for name in ("router", "worker"):
        raw = folder / f"{name}.raw"
        if not raw.exists():
            print(f"py-spy wrote no profile for {name}")
            continue
        stacks = harness.read_stacks(raw)
        total = sum(count for _, count in stacks) or 1
        by_function: dict[str, int] = {}
        for frames, count in stacks:
            for function, path in set(frames):
                where = f"{function} ({path})"
                by_function[where] = by_function.get(where, 0) + count
        print(f"\n{name}: {total} samples (raw stacks in {raw})")
        harness.print_table("incl %  function", by_function, total, 40)


# --- the run --------------------------------------------------------------------------


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def commit_of(tree: Path) -> str:
    return (
        subprocess.run(
            ["git", "-C", str(tree), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or "?"
    )


async def main(args: argparse.Namespace) -> None:
    if STACK_CPU == LOAD_CPU:
        raise SystemExit("the whole-path bench needs two CPUs: one for the stack, one for the load")
    here = harness.ROOT
    trees = {"this": here}
    if args.baseline:
        trees["baseline"] = args.baseline
    litellm_argv, litellm_note = find_litellm(args.litellm)
    figures = {name: Figures() for name in ("direct", *trees, "litellm")}
    os.sched_setaffinity(0, {LOAD_CPU})
    with tempfile.TemporaryDirectory(prefix="whole-path-") as tmp_dir:
        tmp = Path(tmp_dir)
        children = Children(tmp)
        try:
            upstream_port = free_port()
            upstream = await children.spawn(  # on the load's CPU, as this process is now
                "upstream",
                sys.executable,
                str(Path(__file__)),
                "--upstream",
                str(upstream_port),
            )
            upstream_url = f"http://127.0.0.1:{upstream_port}"
            async with harness.http_session() as http:
                await children.wait_ready(
                    "upstream",
                    upstream,
                    lambda: harness.answers(http, f"{upstream_url}/v1/models"),
                    20,
                )
                stacks: dict[str, Stack] = {}
                servers: list[NatsServer] = []
                os.sched_setaffinity(0, {STACK_CPU})  # the children inherit the stack's CPU
                try:
                    for name, tree in trees.items():
                        server = NatsServer()
                        await server.__aenter__()
                        servers.append(server)
                        stacks[name] = await start_stack(
                            children, http, tree, name, server, upstream_url, tmp
                        )
                    litellm_url = None
                    litellm_pids: dict[str, int] = {}
                    if litellm_argv is not None:
                        litellm_url = await start_litellm(
                            children,
                            litellm_argv,
                            tmp,
                            upstream_url,
                            lambda url: harness.answers(http, url),
                        )
                        # The proxy's own process (its CPU per request, as the stacks').
                        litellm_pids = {"litellm": children.processes[-1].pid}
                    os.sched_setaffinity(0, {LOAD_CPU})
                    if args.py_spy:
                        args.py_spy.mkdir(parents=True, exist_ok=True)
                        this = stacks["this"]
                        await measure_path(
                            http,
                            this.url,
                            this.pids,
                            args.seconds,
                            Figures(),
                            (children, args.py_spy),
                        )
                        print_profiles(args.py_spy)
                    order = ["this", "baseline", "baseline", "this"] if args.baseline else ["this"]
                    for _ in range(args.rounds):
                        if not args.worker_only:
                            await measure_path(
                                http, upstream_url, {}, args.seconds, figures["direct"]
                            )
                        for name in order:
                            stack = stacks[name]
                            if not args.worker_only:
                                await measure_path(
                                    http, stack.url, stack.pids, args.seconds, figures[name]
                                )
                            rate, cpu_ms = await worker_rate(
                                stack.nats_url, stack.pids["worker"], args.seconds
                            )
                            figures[name].worker_rate.append(rate)
                            if args.worker_stream:
                                streamed, stream_ms = await worker_stream_rate(
                                    stack.nats_url, stack.pids["worker"], args.seconds
                                )
                                figures[name].stream_rate.append(streamed)
                                figures[name].stream_cpu_ms.append(stream_ms)
                                figures[name].first_chunk_ms.append(
                                    await worker_first_chunk_ms(stack.nats_url, args.seconds / 2)
                                )
                            figures[name].worker_cpu_ms.append(cpu_ms)
                        if litellm_url is not None and not args.worker_only:
                            await measure_path(
                                http, litellm_url, litellm_pids, args.seconds, figures["litellm"]
                            )
                finally:
                    os.sched_setaffinity(0, {LOAD_CPU})
                    await children.stop_all()
                    for server in reversed(servers):
                        await server.__aexit__(None, None, None)
        finally:
            await children.stop_all()
    report(args, trees, figures, litellm_note if litellm_argv is None else None)


def report(
    args: argparse.Namespace,
    trees: dict[str, Path],
    figures: dict[str, Figures],
    litellm_note: str | None,
) -> None:
    direct = figures["direct"]
    floor_p50 = mean([s.pct(0.5) for s in direct.c1])
    floor_p99 = mean([s.pct(0.99) for s in direct.c1])
    floor_ttft = mean(direct.ttft_ms)
    print(
        f"\nwhole path on one core (CPU {STACK_CPU}; load and upstream on CPU {LOAD_CPU}), "
        f"{args.seconds:g} s per phase, {args.rounds} ABBA round(s)"
    )
    print(
        f"direct upstream: c1 p50 {floor_p50:.3f} ms, p99 {floor_p99:.3f} ms, "
        f"TTFT {floor_ttft:.3f} ms\n"
    )
    header = (
        f"{'':<10} {'commit':<14} {'add p50':>8} {'add p99':>8} {'CPU/req':>8} "
        f"{'c32 r/s':>8} {'add TTFT':>8} {'wkr c64':>8} {'wkr CPU':>8} {'errors':>6}"
    )
    print(header)
    rows: list[str] = []
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    for name in (*trees, "litellm"):
        f = figures[name]
        if not f.c1 and not f.worker_rate:
            continue
        commit = commit_of(trees[name]) if name in trees else "LiteLLM"
        added_p50 = mean([s.pct(0.5) for s in f.c1]) - floor_p50
        added_p99 = mean([s.pct(0.99) for s in f.c1]) - floor_p99
        rate = mean([s.rate for s in f.c32])
        ttft = mean(f.ttft_ms) - floor_ttft
        errors = sum(s.errors for s in f.c1 + f.c32)
        cpu = mean(f.cpu_ms)
        wrate = mean(f.worker_rate)
        wcpu = mean(f.worker_cpu_ms)
        split = ", ".join(f"{who} {mean(ms):.3f}" for who, ms in f.cpu_ms_of.items())
        print(
            f"{name:<10} {commit:<14} {added_p50:8.3f} {added_p99:8.3f} {cpu:8.3f} "
            f"{rate:8.0f} {ttft:8.3f} {wrate:8.0f} {wcpu:8.3f} {errors:6d}  ({split})"
        )
        rows.append(
            f"| {stamp} | {name} | {commit} | {added_p50:.2f} | {added_p99:.2f} | {cpu:.2f} "
            f"| {rate:.0f} | {ttft:.2f} | {wrate:.0f} | {wcpu:.3f} | {errors} | {split} |"
        )
    if "baseline" in figures and figures["baseline"].worker_rate and figures["this"].worker_rate:
        this, base = figures["this"], figures["baseline"]
        rate_ratio = mean([s.rate for s in this.c32]) / mean([s.rate for s in base.c32])
        print(
            f"\nthis / baseline: c32 req/s x{rate_ratio:.2f}, "
            f"CPU/req x{mean(this.cpu_ms) / mean(base.cpu_ms):.2f}, "
            f"worker c64 x{mean(this.worker_rate) / mean(base.worker_rate):.2f}, "
            f"worker CPU/job x{mean(this.worker_cpu_ms) / mean(base.worker_cpu_ms):.2f}"
        )
    for name in trees:
        if figures[name].stream_rate:
            print(
                f"{name}: worker streamed c64 {mean(figures[name].stream_rate):.0f} jobs/s, "
                f"CPU {mean(figures[name].stream_cpu_ms):.3f} ms/job; c1 first chunk "
                f"p50 {mean(figures[name].first_chunk_ms):.3f} ms"
            )
    if figures["litellm"].c1:
        ratio = mean([s.rate for s in figures["this"].c32]) / mean(
            [s.rate for s in figures["litellm"].c32]
        )
        print(f"this / LiteLLM: c32 req/s x{ratio:.1f}")
    elif litellm_note:
        print(f"LiteLLM rows skipped: {litellm_note}")
    print(
        "targets: add p50 ≤ {added_p50} ms, p99 ≤ {added_p99} ms, CPU/req ≤ {cpu_ms} ms, "
        "c32 ≥ {rate:.0f} req/s, add TTFT ≤ {ttft} ms".format(**TARGETS)
    )
    if args.record:
        record(rows)


def record(rows: list[str]) -> None:
    """The run's rows into RESULTS.md's whole-path table (before its marker line), or
    at the end of the file when it has no such table."""
    text = RESULTS.read_text()
    added = "\n".join(rows) + "\n"
    if ROWS_MARKER in text:
        text = text.replace(ROWS_MARKER, added + ROWS_MARKER, 1)
    else:
        text += "\n" + added
    RESULTS.write_text(text)
    print(f"rows recorded in {RESULTS}")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="per phase (4)")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds (1)")
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR", help="a worktree with its own .venv"
    )
    parser.add_argument("--litellm", metavar="PATH", help="LiteLLM's executable (or LITELLM_BIN)")
    parser.add_argument(
        "--worker-stream",
        action="store_true",
        help="also streamed jobs straight to the worker: c64 rate and CPU, c1 time to the "
        "first chunk (printed, not recorded)",
    )
    parser.add_argument(
        "--worker-only",
        action="store_true",
        help="only the worker columns (NATS straight to the worker), no HTTP phases",
    )
    parser.add_argument("--record", action="store_true", help="add the rows to RESULTS.md's table")
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="profile router and worker at c32 first"
    )
    parser.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        args.baseline = args.baseline.resolve()
    if args.upstream:
        run(serve_upstream(args.upstream))
        return
    harness.run_cli(main(args), "whole path bench")


if __name__ == "__main__":
    cli()
