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
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import harness
import nats
from harness import Fleet
from nats.aio.client import Client as NatsClient

from services.bus import wait_for_worker
from services.streaming import StreamLimits, request_stream
from services.subjects import Subjects
from services.wire import Chunk, JobRequest, Message, Params
from tools.simulator import expected_text

MODEL = "llama3.2:3b"  # one of the simulator's default models
PROMPT = "hello there"
TTFT_TOKENS = 64
SHORT_TOKENS = 1
RELAY_TOKENS = 256  # the simulator's setting; TTFT bodies cap it with max_tokens

TARGET_ADDED_TTFT_P50_MS = 3.0
TARGET_CHUNKS_PER_S = 20_000.0
CONCURRENCY = 32
NODE_ID = "bench"
PY_SPY_RATE = 200
# Entry points every sample passes through, left out of the project functions.
ENTRY_POINTS = ("router/__main__.py", "node_worker/__main__.py", "services/loop.py")

DIRECT_ROW = "direct: client → simulator"
NATS_ROW = "NATS: request_stream → worker → sim"
ROUTER_ROW = "router: router → NATS → worker → sim"


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
        return harness.percentile((s.ttft_ms for s in self.streams if s.ttft_ms is not None), q)


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

    async def step() -> None:
        try:
            streams.append(await call(tokens))
        except (aiohttp.ClientError, nats.errors.Error, TimeoutError, ValueError):
            streams.append(FAILED)

    return Sample(streams, await harness.for_seconds(step, concurrency, seconds))


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


@dataclass
class Profiles:
    """py-spy's raw stacks per profiled process, once recorded."""

    files: dict[str, Path] = field(default_factory=dict)


def summarize_profile(name: str, raw: Path, chunks: int, top: int = 8) -> None:
    """Where a process's CPU went during the router's c32 phase, from py-spy's raw stacks.

    py-spy names frames `function (package/module.py:line)`; a sample whose innermost
    Python frame is the runner's `run` was in uvloop's C code (socket I/O, scheduling).
    """
    if not raw.exists():
        print(f"\npy-spy wrote no profile for the {name} to {raw}")
        return
    stacks = harness.read_stacks(raw)
    by_package: dict[str, int] = {}
    by_function: dict[str, int] = {}
    total = 0
    for frames, count in stacks:
        total += count
        function, path = frames[-1]
        package = path.split("/", 1)[0]
        if function.endswith("run") and path.endswith("asyncio/runners.py"):
            package = function = "uvloop (C: socket I/O, callbacks)"
        else:
            function = f"{function} ({path})"
        by_package[package] = by_package.get(package, 0) + count
        by_function[function] = by_function.get(function, 0) + count
    if not total:
        print(f"\npy-spy recorded no busy samples in the {name}")
        return
    busy_s = total / PY_SPY_RATE
    print(
        f"\n{name} CPU during the router c{CONCURRENCY} phase (py-spy, {PY_SPY_RATE} Hz, {raw}):"
        f" {total} busy samples ≈ {busy_s:.2f} s"
        f" ≈ {1e6 * busy_s / max(chunks, 1):.1f} µs per relayed chunk"
    )
    harness.print_table("self %  innermost frame's package", by_package, total, top)
    harness.print_table("self %  innermost function", by_function, total, top)
    project = harness.project_functions(stacks, ENTRY_POINTS)
    harness.print_table("incl %  project function", project, total, top)


async def main(seconds: float, py_spy: Path | None) -> None:
    results: dict[str, Row] = {}
    profiles = Profiles()
    async with harness.fleet("stream-bench-") as fleet:
        await run_bench(fleet, seconds, results, py_spy, profiles)
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
    fleet: Fleet,
    seconds: float,
    results: dict[str, Row],
    py_spy: Path | None,
    profiles: Profiles,
) -> None:
    children = fleet.children
    async with harness.http_session() as http:
        sim_url = await fleet.simulator(
            http, "/v1/models", "--tokens", str(RELAY_TOKENS), "--token-interval-ms", "0"
        )
        worker = await fleet.worker(sim_url, "openai", llm_concurrency=256, node_id=NODE_ID)
        router, router_url = await fleet.router(http, worker)

        nc = await nats.connect(fleet.nats_url, pending_size=64 * 1024 * 1024)
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
                spied: dict[str, tuple[int, Path]] = {}
                if name == ROUTER_ROW and py_spy is not None:
                    pids = {"router": router.pid, "worker": worker.pid}
                    spied = {who: (pid, py_spy / f"{who}.raw") for who, pid in pids.items()}
                    profiles.files |= {who: raw for who, (_, raw) in spied.items()}
                async with harness.profiling(children, spied, seconds, PY_SPY_RATE):
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
    harness.run_cli(main(args.seconds, args.py_spy), "stream bench")


if __name__ == "__main__":
    cli()
