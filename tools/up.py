"""`inferbus up`: the whole system on one machine, for trying it and for demos.

Composes processes, not imports: an embedded nats-server (JetStream on), the runtime
simulator when no local runtime answers, one node worker in front of whatever was found
(more, simulated, with --workers), and the router. Config files are written from the
worker's and router's settings models. Each child's PID is printed; a worker that dies
is reported with its cause while the rest keeps running (the failover demo), a router
that dies (its port taken, say) stops everything at once with its cause. Ctrl-C stops
everything it started, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import yaml

from node_worker.config import BackendConfig, WorkerSettings
from router.config import HttpSettings, LocalRuntime, RouterSettings
from services.bus import wait_for_worker
from services.capabilities import record_ttl_s
from services.errors import InferbusError
from services.localnet import free_port, port_open
from services.nats_server import NatsServer
from services.runtimes import make_runtime, new_http_client
from services.runtimes.base import RuntimeKind
from services.subjects import Subjects, validate_node_id
from tools.children import Child, ChildExited, Children, Interrupted

# The router is ready (NATS connected, a route possible) within seconds; past this,
# something is wrong and its own log says what.
ROUTER_READY_S = 60.0

# Its workers announce themselves this often (a GPU node's default is 10 s): a worker
# killed outright shows as stale within 3 heartbeats, seconds into the failover demo.
UP_HEARTBEAT_S = 2.0

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


async def _wait_for_line(process: asyncio.subprocess.Process, marker: str) -> str:
    assert process.stdout is not None
    while line := (await process.stdout.readline()).decode():
        if marker in line:
            return line.strip()
    raise RuntimeError(f"process {process.pid} exited before saying {marker!r}")


async def _wait_for_node(nats_url: str, node_id: str) -> None:
    """Until the node answers its caps subject: a probe that is no job, so the worker's
    `$SRV` stats do not count it as a bad request."""
    nc = await nats.connect(nats_url)
    try:
        await wait_for_worker(nc, Subjects().caps(node_id))
    finally:
        await nc.close()


async def _node_answers(nats_url: str, node_id: str) -> bool:
    """Whether a worker with this node id already runs on that NATS server."""
    nc = await nats.connect(nats_url)
    try:
        await nc.request(Subjects().caps(node_id), b"", timeout=1)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    finally:
        await nc.close()
    return True


def worker_config(node_id: str, nats_url: str, backends: list[tuple[RuntimeKind, str]]) -> str:
    """The worker's config file, from its settings model (validated, so a bad value fails
    here and not in the child)."""
    settings = WorkerSettings(
        node_id=node_id,
        nats_url=[nats_url],
        heartbeat_s=UP_HEARTBEAT_S,
        backends=[BackendConfig(kind=kind, url=url) for kind, url in backends],
    )
    return _yaml(settings.model_dump(mode="json", exclude_defaults=True))


def router_config(
    node_id: str, nats_url: str, http_port: int, local: tuple[RuntimeKind, str]
) -> str:
    """The router's config file, from its settings model."""
    kind, url = local
    settings = RouterSettings(
        nats_url=[nats_url],
        http=HttpSettings(host="127.0.0.1", port=http_port),
        local_node=node_id,
        local_runtime=LocalRuntime(kind=kind, url=url),
    )
    dumped = settings.model_dump(mode="json", exclude_defaults=True)
    # Said explicitly, although they may be the defaults: the file shows where it listens.
    dumped["http"] = {**dumped.get("http", {}), "host": "127.0.0.1", "port": http_port}
    return _yaml(dumped)


def _yaml(values: dict[str, Any]) -> str:
    return yaml.safe_dump(values, sort_keys=False)


async def _start_simulator(children: Children) -> str:
    """A runtime simulator on a free port; its URL."""
    port = free_port()
    simulator = await children.spawn(
        "simulator",
        "-m",
        "tools.simulator",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    await children.until(simulator, _wait_for_line(simulator.process, "listening on"))
    return f"http://127.0.0.1:{port}"


async def _wait_for_http(url: str, timeout_s: float) -> None:
    """Until the URL answers 200 (the router is ready); TimeoutError after `timeout_s`."""
    async with new_http_client() as client, asyncio.timeout(timeout_s):
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


def inferbus_command() -> str:
    """How to run `inferbus` as pasted: the venv's script, relative when under the cwd."""
    script = Path(sys.executable).parent / "inferbus"
    if not script.exists():
        return f"{sys.executable} -m tools.cli"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def job_examples(router_url: str, nats_url: str, node_id: str, inferbus: str) -> list[str]:
    """The jobs to paste, each runnable as printed; the NATS CLI's last, as it is the one
    a fresh machine lacks."""
    subject = Subjects().job(node_id, "llm")
    return [
        "Send a job:",
        f"  curl -s {router_url}/v1/chat/completions -H 'Content-Type: application/json' "
        '-d \'{"messages":[{"role":"user","content":"Say hello"}]}\'',
        f"  {inferbus} req {node_id} 'Say hello' --server {nats_url}",
        f"  curl -s {router_url}/nodes        # the fleet as the router sees it",
        "With the NATS CLI installed (https://github.com/nats-io/natscli):",
        f'  nats req {subject} \'{{"prompt":"Say hello"}}\' --server {nats_url}',
    ]


def failover_demo(router_url: str, node_id: str, pid: int) -> list[str]:
    """How to watch failover: stop the node that takes the jobs (the router's own node
    comes first), and what each way of stopping it shows."""
    stale_s = record_ttl_s(UP_HEARTBEAT_S)
    return [
        f"Failover: node {node_id!r} takes the jobs (the router's own node comes first).",
        f"  kill {pid}       # a clean stop: it withdraws at once, jobs go to the others",
        f"  kill -9 {pid}    # a crash: jobs go to the others at once; {router_url}/nodes",
        f"                     shows it stale: true within {stale_s:g} s (3 heartbeats)",
    ]


class UpRefused(Exception):
    """`up` cannot start as asked (a port taken, a node id already running): exit 2."""


def _claim(data_dir: Path) -> Path:
    """`data_dir/up.pid`, refusing when another live `up` holds it (it would overwrite
    that run's configs)."""
    lock = data_dir / "up.pid"
    with contextlib.suppress(OSError, ValueError):
        other = int(lock.read_text())
        if other != os.getpid() and Path(f"/proc/{other}").exists():
            raise UpRefused(
                f"another `inferbus up` (pid {other}) uses {data_dir}: "
                "stop it, or give this one --data-dir"
            )
    lock.write_text(str(os.getpid()))
    return lock


async def up(options: UpOptions) -> int:
    try:
        return await _up(options)
    except UpRefused as refusal:
        say(f"inferbus up: {refusal}")
        return 2


async def _own_nats(
    options: UpOptions, data_dir: Path, nats_url: str, node_ids: list[str]
) -> NatsServer | None:
    """Start the embedded nats-server, or reuse the one on the port if no twin runs there."""
    nats_server: NatsServer | None = None
    if port_open(options.nats_port):
        say(f"nats: reusing the server already listening on {nats_url}")
        for node_id in node_ids:
            if await _node_answers(nats_url, node_id):
                raise UpRefused(
                    f"a worker with node id {node_id!r} already runs on {nats_url} "
                    "(another `inferbus up`?): give this one --node-id or --nats-port"
                )
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
    return nats_server


async def _runtimes_or_simulator(children: Children) -> list[tuple[RuntimeKind, str]]:
    """The local runtimes found, or the simulator started in their place, loudly."""
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
    return backends


async def _up(options: UpOptions) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP: the terminal `up` runs in was closed; its children must not outlive it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    try:
        validate_node_id(options.node_id)
    except ValueError as error:
        raise UpRefused(f"--node-id: {error}") from None
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if port_open(options.http_port):
        raise UpRefused(f"port {options.http_port} is in use: pick another with --http-port")
    lock = _claim(data_dir)
    children = Children(stop)
    nats_server: NatsServer | None = None
    nats_url = f"nats://127.0.0.1:{options.nats_port}"
    waiting_for = "a child"
    node_ids = [options.node_id] + [f"{options.node_id}-{n}" for n in range(2, options.workers + 1)]
    try:
        nats_server = await _own_nats(options, data_dir, nats_url, node_ids)
        backends = await _runtimes_or_simulator(children)

        nodes: list[tuple[str, list[tuple[RuntimeKind, str]]]] = [(options.node_id, backends)]
        for node_id in node_ids[1:]:  # extra simulated nodes, to try failover
            nodes.append((node_id, [("ollama", await _start_simulator(children))]))
        inferbus = inferbus_command()
        workers: list[tuple[Child, str, list[tuple[RuntimeKind, str]]]] = []
        for node_id, node_backends in nodes:
            config = data_dir / f"worker-{node_id}.yml"
            config.write_text(worker_config(node_id, nats_url, node_backends))
            worker = await children.spawn(
                f"worker {node_id!r}",
                "-m",
                "node_worker",
                "--config",
                str(config),
                restart=f"{inferbus} worker --config {config}",
            )
            workers.append((worker, node_id, node_backends))
        for worker, node_id, node_backends in workers:
            waiting_for = worker.role
            await children.until(worker, _wait_for_node(nats_url, node_id))
            runtimes = ", ".join(f"{kind} {url}" for kind, url in node_backends)
            subject = Subjects().job(node_id, "llm")
            say(f"worker: node {node_id!r} pid {worker.process.pid} on {subject} ({runtimes})")
        router_file = data_dir / "router.yml"
        router_file.write_text(
            router_config(options.node_id, nats_url, options.http_port, backends[0])
        )
        router = await children.spawn("router", "-m", "router", "--config", str(router_file))
        router_url = f"http://127.0.0.1:{options.http_port}"
        waiting_for = "the router"
        await children.until(router, _wait_for_http(f"{router_url}/ready", ROUTER_READY_S))
        say(
            f"router: {router_url} pid {router.process.pid} "
            f"(OpenAI-compatible at {router_url}/v1, config {router_file})"
        )
        if nats_server is not None and nats_server.pid is not None:
            say(f"nats: pid {nats_server.pid}")
        say("")
        for line in job_examples(router_url, nats_url, options.node_id, inferbus):
            say(line)
        if len(workers) > 1:
            say("")
            first = workers[0][0]
            for line in failover_demo(router_url, options.node_id, first.process.pid):
                say(line)
        say("")
        say("Ctrl-C stops everything.")
        return await _watch(children, router, stop)
    except ChildExited as exited:
        say(f"inferbus up: {exited}; stopping everything")
        return 2 if exited.child.process.returncode == 2 else 1
    except Interrupted:
        return 0
    except TimeoutError:
        say(f"inferbus up: {waiting_for} did not get ready in time (its log is above)")
        return 1
    finally:
        await children.stop_all()
        if nats_server is not None:
            await nats_server.stop()
        with contextlib.suppress(OSError):
            lock.unlink()
        say("stopped")


async def _watch(children: Children, router: Child, stop: asyncio.Event) -> int:
    """Until Ctrl-C or the router exits. A worker or simulator that exits is reported with
    its cause and the command that restarts it; the rest keeps running (the failover demo:
    kill one worker and watch the router route around it)."""
    stopping = asyncio.create_task(stop.wait())
    exits = {asyncio.create_task(child.process.wait()): child for child in children.all}
    try:
        while True:
            done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return 0
            for task in done:
                child = exits.pop(task)
                await children.settled(child)
                if child is router:
                    raise ChildExited(child)
                say(f"{child.role} (pid {child.process.pid}) exited, {child.cause()}.")
                say(
                    "  The rest keeps running."
                    + (f" To restart it: {child.restart}" if child.restart else "")
                )
    finally:
        stopping.cancel()
        for task in exits:
            task.cancel()


def default_data_dir() -> Path:
    """Project-local `.inferbus/` when writable, else the user's cache directory."""
    here = Path(".inferbus")
    if os.access(Path.cwd(), os.W_OK):
        return here
    return Path.home() / ".cache" / "inferbus"
