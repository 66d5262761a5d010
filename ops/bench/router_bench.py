"""What the router costs on top of the runtime, measured in one run.

Starts a nats-server, the runtime simulator (0 ms latency, 16 tokens), one node worker in
front of it and the router, each in its own process, then measures from this process,
with one shared aiohttp session for every row:

  floor  POST /v1/chat/completions → simulator                       (the runtime alone)
  path   POST /v1/chat/completions → router → NATS → worker → simulator
  traced the same path with `telemetry.otlp_endpoint` set on the router and the worker:
         every request traced, its spans exported to an OTLP sink in this process (the
         plain path has tracing off: what off costs is the path row against earlier runs)

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
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import harness
from aiohttp import web
from harness import Children, Fleet, Sample, measure

from services.localnet import free_port

MODEL = "llama3.2:3b"  # one of the simulator's default models
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}
).encode()

TARGET_ADDED_P50_MS = 2.0
TARGET_RATE = 1000.0
CONCURRENCY = 64
PY_SPY_RATE = 500
# Entry points every sample passes through, left out of the project functions.
ENTRY_POINTS = ("router/__main__.py", "services/loop.py")

FLOOR_ROW = "floor: client → simulator"
PATH_ROW = "path: router → NATS → worker → sim"
TRACED_ROW = "path, traced (OTLP, every request)"
LITELLM_ROW = "LiteLLM: proxy → simulator"


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


def summarize_profile(raw: Path, c1: Sample, top: int = 10) -> None:
    """Where the router's CPU went during the c1 path phase, from py-spy's raw stacks.

    py-spy names frames `function (package/module.py:line)`; a sample whose innermost
    Python frame is the runner's `run` was in uvloop's C code (socket I/O, scheduling).
    """
    if not raw.exists():
        print(f"\npy-spy wrote no profile to {raw}")
        return
    stacks = harness.read_stacks(raw)
    by_package: dict[str, int] = {}
    total = 0
    for frames, count in stacks:
        total += count
        function, path = frames[-1]
        package = path.split("/", 1)[0]
        if function == "Runner.run":
            package = "uvloop (C: socket I/O, callbacks)"
        by_package[package] = by_package.get(package, 0) + count
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
    harness.print_table("self %  where (innermost frame's package)", by_package, total, top)
    project = harness.project_functions(stacks, ENTRY_POINTS)
    harness.print_table("incl %  project function", project, total, top)


async def main(seconds: float, litellm: str | None, py_spy: Path | None) -> None:
    litellm_argv, litellm_note = find_litellm(litellm)
    results: dict[str, tuple[Sample, Sample]] = {}
    async with harness.fleet("router-bench-") as fleet:
        skipped = await run_bench(fleet, litellm_argv, seconds, results, py_spy)
        litellm_note = skipped or litellm_note

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
    rows = (("inferbus router", PATH_ROW), ("traced router", TRACED_ROW))
    for label, name in (*rows, ("LiteLLM proxy", LITELLM_ROW)):
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
    fleet: Fleet,
    litellm_argv: list[str] | None,
    seconds: float,
    results: dict[str, tuple[Sample, Sample]],
    py_spy: Path | None,
) -> str | None:
    """Fill `results`; returns why the LiteLLM rows were skipped after all, if they were."""
    async with harness.http_session() as http, otlp_sink() as sink_url:
        sim_url = await fleet.simulator(http, "/api/tags", "--tokens", "16")
        worker = await fleet.worker(sim_url, "ollama", llm_concurrency=256)
        router, router_url = await fleet.router(http, worker)
        # The same path with tracing on, exporting every span to an OTLP sink here: its
        # own worker and router, kept apart from the plain path by a subject prefix.
        traced_worker = await fleet.worker(
            sim_url,
            "ollama",
            llm_concurrency=256,
            node_id="traced",
            extra_toml=f'[telemetry]\notlp_endpoint = "{sink_url}"\n',
            subject_prefix="traced",
        )
        _, traced_url = await fleet.router(
            http,
            traced_worker,
            name="router-traced",
            extra_yaml=f"subject_prefix: traced\ntelemetry:\n  otlp_endpoint: {sink_url}\n",
        )
        targets = {
            FLOOR_ROW: f"{sim_url}/v1/chat/completions",
            PATH_ROW: f"{router_url}/v1/chat/completions",
            TRACED_ROW: f"{traced_url}/v1/chat/completions",
        }
        litellm_skipped: str | None = None
        if litellm_argv is not None:
            try:
                litellm_url = await start_litellm(
                    fleet.children,
                    litellm_argv,
                    fleet.tmp,
                    sim_url,
                    lambda url: harness.answers(http, url),
                )
                targets[LITELLM_ROW] = f"{litellm_url}/v1/chat/completions"
            except RuntimeError as error:
                print(f"LiteLLM proxy failed: {error}", file=sys.stderr)
                litellm_skipped = f"the LiteLLM proxy did not start ({first_line(error)})"
        skipped = await timed_rows(fleet, router, http, targets, seconds, results, py_spy)
        return skipped or litellm_skipped


async def timed_rows(
    fleet: Fleet,
    router: asyncio.subprocess.Process,
    http: aiohttp.ClientSession,
    targets: dict[str, str],
    seconds: float,
    results: dict[str, tuple[Sample, Sample]],
    py_spy: Path | None,
) -> str | None:
    """Check every row answers, warm them all, then time them in turn."""
    children = fleet.children
    litellm_skipped: str | None = None

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
        spied = {"router": (router.pid, py_spy)} if name == PATH_ROW and py_spy else {}
        async with harness.profiling(children, spied, seconds, PY_SPY_RATE):
            c1 = await measure(call, 1, seconds)
        results[name] = (c1, await measure(call, CONCURRENCY, seconds))
    return litellm_skipped


@contextlib.asynccontextmanager
async def otlp_sink() -> AsyncIterator[str]:
    """An OTLP/HTTP endpoint on loopback that takes every export and keeps nothing."""

    async def take(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


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
    harness.run_cli(main(args.seconds, args.litellm, args.py_spy), "router bench")


if __name__ == "__main__":
    cli()
