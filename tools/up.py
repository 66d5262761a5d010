"""`inferbus up`: the whole system on one machine, for trying it and for demos.

Composes processes, not imports: an embedded nats-server (JetStream on), the runtime
simulator when no local runtime answers, and one node worker in front of whatever was
found. Ctrl-C stops everything it started, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from services.bus import wait_for_worker
from services.errors import InferbusError
from services.localnet import free_port, port_open
from services.nats_server import NatsServer
from services.runtimes import make_runtime, new_http_client
from services.runtimes.base import RuntimeKind
from services.subjects import Subjects

# Where runtimes listen by default on a GPU box.
LOCAL_RUNTIMES: tuple[tuple[RuntimeKind, str], ...] = (
    ("ollama", "http://127.0.0.1:11434"),
    ("vllm", "http://127.0.0.1:8000"),
    ("llamacpp", "http://127.0.0.1:8080"),
    ("lmstudio", "http://127.0.0.1:1234"),
)


@dataclass(frozen=True)
class UpOptions:
    nats_port: int = 4222
    http_port: int = 8090
    workers: int = 1
    node_id: str = "local"
    data_dir: Path = Path(".inferbus")


def say(line: str = "") -> None:
    print(line, flush=True)


async def find_local_runtimes() -> list[tuple[RuntimeKind, str]]:
    """The default-port runtimes that answer a health probe now."""
    async with new_http_client() as client:

        async def probe(kind: RuntimeKind, url: str) -> bool:
            try:
                await make_runtime(kind, url, client).health()
            except InferbusError:
                return False
            return True

        answers = await asyncio.gather(*(probe(kind, url) for kind, url in LOCAL_RUNTIMES))
    return [runtime for runtime, up in zip(LOCAL_RUNTIMES, answers, strict=True) if up]


async def _spawn(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
    )


async def _wait_for_line(process: asyncio.subprocess.Process, marker: str) -> str:
    assert process.stdout is not None
    while line := (await process.stdout.readline()).decode():
        if marker in line:
            return line.strip()
    raise RuntimeError(f"process {process.pid} exited before saying {marker!r}")


async def _wait_for_worker(nats_url: str, subject: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await wait_for_worker(nc, subject)
    finally:
        await nc.close()


def _worker_config(node_id: str, nats_url: str, backends: list[tuple[RuntimeKind, str]]) -> str:
    lines = [f'node_id = "{node_id}"', f'nats_url = "{nats_url}"', ""]
    for kind, url in backends:
        lines += ["[[backends]]", f'kind = "{kind}"', f'url = "{url}"', ""]
    return "\n".join(lines)


async def _start_simulator(children: list[asyncio.subprocess.Process]) -> str:
    """A runtime simulator on a free port; its URL."""
    port = free_port()
    simulator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.simulator",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    children.append(simulator)
    await _wait_for_line(simulator, "listening on")
    return f"http://127.0.0.1:{port}"


def _router_config(
    node_id: str, nats_url: str, http_port: int, local: tuple[RuntimeKind, str]
) -> str:
    kind, url = local
    return (
        f"nats_url: {nats_url}\n"
        f"http: {{host: 127.0.0.1, port: {http_port}}}\n"
        f"local_node: {node_id}\n"
        f"local_runtime: {{kind: {kind}, url: '{url}'}}\n"
    )


async def _wait_for_http(url: str) -> None:
    """Until the URL answers 200 (the router is ready), at most 30 s."""
    async with new_http_client() as client, asyncio.timeout(30):
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def up(options: UpOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    children: list[asyncio.subprocess.Process] = []
    nats_server: NatsServer | None = None
    nats_url = f"nats://127.0.0.1:{options.nats_port}"
    try:
        if port_open(options.nats_port):
            say(f"nats: reusing the server already listening on {nats_url}")
        else:
            # 8 MB messages, as ops/nats/single.conf: images travel inside the jobs.
            limits = data_dir / "nats.conf"
            limits.write_text("max_payload: 8MB\n")
            nats_server = NatsServer(
                port=options.nats_port,
                jetstream_dir=data_dir / "jetstream",
                config_file=limits,
            )
            await nats_server.start()
            say(f"nats: embedded nats-server on {nats_url} (JetStream in {data_dir / 'jetstream'})")

        backends = await find_local_runtimes()
        if backends:
            for kind, url in backends:
                say(f"runtime: found {kind} at {url}")
        else:
            simulator_url = await _start_simulator(children)
            backends = [("ollama", simulator_url)]
            say("")
            say("!" * 78)
            say("!! NO LOCAL RUNTIME FOUND (ollama :11434, vllm :8000, llama.cpp :8080,")
            say("!! lmstudio :1234). Serving the built-in SIMULATOR instead: answers are")
            say(f"!! generated text, not a model. Simulator at {simulator_url}")
            say("!" * 78)
            say("")

        nodes = [(options.node_id, backends)]
        for n in range(2, options.workers + 1):  # extra simulated nodes, to try failover
            nodes.append((f"{options.node_id}-{n}", [("ollama", await _start_simulator(children))]))
        for node_id, node_backends in nodes:
            config = data_dir / f"worker-{node_id}.toml"
            config.write_text(_worker_config(node_id, nats_url, node_backends))
            children.append(await _spawn("-m", "node_worker", "--config", str(config)))
        for node_id, node_backends in nodes:
            subject = Subjects().job(node_id, "llm")
            await _wait_for_worker(nats_url, subject)
            runtimes = ", ".join(f"{kind} {url}" for kind, url in node_backends)
            say(f"worker: node {node_id!r} on {subject} ({runtimes})")
        subject = Subjects().job(options.node_id, "llm")
        router_config = data_dir / "router.yml"
        router_config.write_text(
            _router_config(options.node_id, nats_url, options.http_port, backends[0])
        )
        children.append(await _spawn("-m", "router", "--config", str(router_config)))
        router_url = f"http://127.0.0.1:{options.http_port}"
        await _wait_for_http(f"{router_url}/ready")
        say(f"router: {router_url} (OpenAI-compatible at {router_url}/v1, config {router_config})")
        say("")
        say("Send a job:")
        say(
            f"  curl -s {router_url}/v1/chat/completions -H 'Content-Type: application/json' "
            '-d \'{"messages":[{"role":"user","content":"Say hello"}]}\''
        )
        say(f"  inferbus req {options.node_id} 'Say hello'")
        say(f'  nats req {subject} \'{{"prompt":"Say hello"}}\' --server {nats_url}')
        say("")
        say("Ctrl-C stops everything.")
        waiters = [asyncio.create_task(stop.wait())] + [
            asyncio.create_task(child.wait()) for child in children
        ]
        _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not stop.is_set():
            say("a child process exited; stopping everything")
            return 1
        return 0
    finally:
        for child in reversed(children):
            await _stop(child)
        if nats_server is not None:
            await nats_server.stop()
        say("stopped")


def default_data_dir() -> Path:
    """Project-local `.inferbus/` when writable, else the user's cache directory."""
    here = Path(".inferbus")
    if os.access(Path.cwd(), os.W_OK):
        return here
    return Path.home() / ".cache" / "inferbus"
