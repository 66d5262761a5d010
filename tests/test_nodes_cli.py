"""`inferbus nodes`: what an operator sees of the fleet, and how scripts tell the cases apart.

Rendering is checked by tables; gathering against hand-built responders on a real
nats-server; the command itself as a subprocess, as an operator runs it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.bus import flush_interest
from services.capabilities import (
    Capabilities,
    Gpu,
    Hardware,
    Load,
    RuntimeStatus,
    ServedModel,
    encode_capabilities,
)
from services.fleet_scan import collect_fleet, newest_records
from services.localnet import free_port
from services.nats_server import NatsServer
from services.subjects import Subjects
from tools.nodes import format_age, render_table

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0


def record(
    node_id: str = "gpu-a", *, seq: int = 1, age_s: float = 3, **fields: Any
) -> Capabilities:
    values: dict[str, Any] = {
        "node_id": node_id,
        "version": "0.1.0",
        "seq": seq,
        "ts": NOW - age_s,
        "ttl_s": 30,
    }
    values.update(fields)
    return Capabilities(**values)


OLLAMA = RuntimeStatus(
    kind="ollama", url="http://10.0.0.5:11434", state="healthy", latency_ms=3.2, models=2
)
VLLM_DOWN = RuntimeStatus(
    kind="vllm",
    url="http://10.0.0.5:8000",
    state="unhealthy",
    models=0,
    last_error="connection refused",
)
QWEN = ServedModel(
    name="qwen3:8b", type="llm", runtime="ollama", size_gb=5.2, running=True, context_window=40960
)
LLAVA = ServedModel(name="llava:7b", type="vision", runtime="ollama", size_gb=4.7, running=False)
RTX = Gpu(
    name="NVIDIA GeForce RTX 4090", memory_total_mb=24564, memory_used_mb=6021, utilization_pct=37
)
GPU_A = record(
    "gpu-a",
    seq=42,
    runtimes=(OLLAMA, VLLM_DOWN),
    served_models=(QWEN, LLAVA),
    load={"vision": Load(inflight=0, capacity=1), "llm": Load(inflight=1, capacity=4)},
    hardware=Hardware(gpus=(RTX,)),
)
GPU_B = record(
    "gpu-bb-02",
    seq=7,
    age_s=95,
    runtimes=(
        RuntimeStatus(
            kind="openai", url="http://127.0.0.1:8080", state="healthy", latency_ms=0.4, models=1
        ),
    ),
    served_models=(
        ServedModel(name="Qwen2.5-Coder-32B", type="code", runtime="llamacpp", running=True),
    ),
    load={"llm": Load(inflight=2, capacity=2)},
)


# --- rendering, by table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (3.9, "3s"),
        (59, "59s"),
        (60, "1m00s"),
        (125, "2m05s"),
        (3720, "1h02m"),
        (273_600, "3d04h"),
    ],
)
def test_age_reads_in_the_largest_sensible_units(seconds: float, shown: str) -> None:
    assert format_age(seconds) == shown


@pytest.mark.parametrize(
    ("records", "wanted_lines"),
    [
        pytest.param([], ["no nodes answered on ncs.discover"], id="nobody"),
        pytest.param(
            [GPU_A],
            [
                "gpu-a  seen 3s ago  llm 1/4  vision 0/1  v0.1.0 seq 42",
                "  runtimes",
                "    ollama@http://10.0.0.5:11434  healthy    3ms  2 models",
                "    vllm@http://10.0.0.5:8000     unhealthy  -    0 models  connection refused",
                "  models",
                "    qwen3:8b  llm     ollama  running  5.2 GB  ctx 40960",
                "    llava:7b  vision  ollama           4.7 GB",
                "  gpus",
                "    gpu0  NVIDIA GeForce RTX 4090  6021/24564 MiB  37% busy",
            ],
            id="full-node",
        ),
        pytest.param(
            [record(runtimes=(), served_models=(), load={})],
            [
                "gpu-a  seen 3s ago  load ?  v0.1.0 seq 1",
                "  runtimes",
                "    none reported",
                "  models",
                "    none served",
            ],
            id="empty-node-says-so-and-shows-no-gpus",
        ),
        pytest.param(
            [record(age_s=95, load={"llm": Load(inflight=2, capacity=2)})],
            ["gpu-a  seen 1m35s ago STALE (ttl 30s)  llm 2/2 FULL  v0.1.0 seq 1"],
            id="stale-and-saturated",
        ),
        pytest.param(
            [record(age_s=-120)],
            ["gpu-a  clock 2m00s ahead  load ?  v0.1.0 seq 1"],
            id="clock-skew-is-shown-not-hidden",
        ),
        pytest.param(
            [
                record(
                    runtimes=(
                        RuntimeStatus(kind="ollama", url="http://h:1", state="unknown"),
                        RuntimeStatus(
                            kind="vllm", url="http://h:2", state="healthy", latency_ms=0.42
                        ),
                    ),
                    hardware=Hardware(gpus=(Gpu(name="NVIDIA GH200"),)),
                )
            ],
            [
                "    ollama@http://h:1  unknown  -      0 models",
                "    vllm@http://h:2    healthy  0.4ms  0 models",
                "    gpu0  NVIDIA GH200  ?/? MiB  ?% busy",
            ],
            id="unknowns-stay-unknown",
        ),
        pytest.param(
            [
                record(
                    load={
                        "embed": Load(inflight=0, capacity=2),
                        "llm": Load(inflight=0, capacity=1),
                    }
                )
            ],
            ["gpu-a  seen 3s ago  llm 0/1  embed 0/2  v0.1.0 seq 1"],
            id="llm-load-first",
        ),
    ],
)
def test_table_shows_what_an_operator_needs(
    records: list[Capabilities], wanted_lines: list[str]
) -> None:
    lines = render_table(records, now_unix=NOW).splitlines()
    for wanted in wanted_lines:
        assert wanted in lines


def test_table_columns_line_up_across_nodes() -> None:
    lines = render_table([GPU_A, GPU_B], now_unix=NOW).splitlines()

    def column_of(text: str, line_start: str) -> int:
        return next(line.index(text) for line in lines if line.startswith(line_start))

    assert lines[0].startswith("gpu-a ")
    assert column_of("seen", "gpu-a") == column_of("seen", "gpu-bb-02")
    assert column_of("healthy", "    ollama@") == column_of("healthy", "    openai@")
    assert column_of("llm", "    qwen3") == column_of("code", "    Qwen2.5")
    assert "" in lines  # a blank line between the blocks
    assert all(line == line.rstrip() for line in lines)


def test_empty_fleet_names_the_subject_that_was_asked() -> None:
    table = render_table([], now_unix=NOW, discover_subject="prod.ncs.discover")
    assert table == "no nodes answered on prod.ncs.discover"


@pytest.mark.parametrize(
    ("payloads", "wanted"),
    [
        pytest.param([], [], id="none"),
        pytest.param([b"", b"not json", b'{"node_id": "x"}', b"[]"], [], id="only-garbage"),
        pytest.param(
            [encode_capabilities(record("b")), b"\xff", encode_capabilities(record("a"))],
            [("a", 1), ("b", 1)],
            id="sorted-by-node-garbage-dropped",
        ),
        pytest.param(
            [encode_capabilities(record("a", seq=s)) for s in (3, 9, 4)],
            [("a", 9)],
            id="highest-seq-not-last",
        ),
    ],
)
def test_one_newest_record_per_node(payloads: list[bytes], wanted: list[tuple[str, int]]) -> None:
    assert [(r.node_id, r.seq) for r in newest_records(payloads)] == wanted


# --- gathering, against a real nats-server ------------------------------------------------


Reply = Callable[[Msg], Awaitable[None]]


def replies_with(*payloads: bytes, delay_s: float = 0.0) -> Reply:
    """A discover responder that answers each scatter with `payloads`, in order."""

    async def respond(msg: Msg) -> None:
        for payload in payloads:
            if delay_s:
                await asyncio.sleep(delay_s)
            await msg.respond(payload)

    return respond


@asynccontextmanager
async def responders(
    server_url: str, subject: str, answers: Iterable[Reply]
) -> AsyncIterator[None]:
    """Each answer on its own connection, like separate workers; subscribed at the server
    before the block runs."""
    connections: list[NatsClient] = []
    try:
        for answer in answers:
            nc = await nats.connect(server_url)
            connections.append(nc)
            await nc.subscribe(subject, cb=answer)
            await flush_interest(nc)
        yield
    finally:
        for nc in connections:
            await nc.close()


def fleet_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def test_every_node_is_listed_once_with_its_newest_record_and_garbage_is_ignored(
    nats_server: NatsServer, nc: NatsClient
) -> None:
    subjects = Subjects(fleet_prefix())
    answers = [
        replies_with(encode_capabilities(record("gpu-b", seq=2))),
        replies_with(
            encode_capabilities(record("gpu-a", seq=5, served_models=(QWEN,))),
            encode_capabilities(record("gpu-a", seq=1)),
        ),
        replies_with(b"definitely not a record", b'{"node_id": "gpu-x"}'),
        replies_with(encode_capabilities(record("gpu-c", seq=1))),
    ]
    async with responders(nats_server.url, subjects.discover(), answers):
        fleet = await collect_fleet(nc, subjects, wait_s=5)

    assert [(r.node_id, r.seq) for r in fleet] == [("gpu-a", 5), ("gpu-b", 2), ("gpu-c", 1)]
    assert fleet[0].served_models == (QWEN,)


async def test_a_slow_first_answer_within_the_wait_is_still_counted(
    nats_server: NatsServer, nc: NatsClient
) -> None:
    subjects = Subjects(fleet_prefix())
    slow = replies_with(encode_capabilities(record("gpu-slow")), delay_s=0.6)
    async with responders(nats_server.url, subjects.discover(), [slow]):
        fleet = await collect_fleet(nc, subjects, wait_s=5, quiet_s=0.2)

    assert [r.node_id for r in fleet] == ["gpu-slow"]


async def test_gathering_stops_once_the_fleet_goes_quiet(
    nats_server: NatsServer, nc: NatsClient
) -> None:
    subjects = Subjects(fleet_prefix())
    prompt = replies_with(encode_capabilities(record("gpu-a")))
    straggler = replies_with(encode_capabilities(record("gpu-late")), delay_s=2.0)
    async with responders(nats_server.url, subjects.discover(), [prompt, straggler]):
        started = time.monotonic()
        fleet = await collect_fleet(nc, subjects, wait_s=10, quiet_s=0.3)
        took_s = time.monotonic() - started

    assert [r.node_id for r in fleet] == ["gpu-a"]
    assert took_s < 2.0  # ended by the quiet window, not by the 10 s wait


async def test_a_silent_fleet_is_known_at_once_not_after_the_wait(nc: NatsClient) -> None:
    started = time.monotonic()
    fleet = await collect_fleet(nc, Subjects(fleet_prefix()), wait_s=10)

    assert fleet == []
    assert time.monotonic() - started < 5  # the server's no-responders status ended it


# --- the command, as a subprocess ----------------------------------------------------------


async def inferbus(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_nodes_json_lists_the_records_and_exits_0(nats_server: NatsServer) -> None:
    prefix = fleet_prefix()
    answers = [
        replies_with(encode_capabilities(GPU_A)),
        replies_with(encode_capabilities(GPU_B)),
    ]
    async with responders(nats_server.url, Subjects(prefix).discover(), answers):
        code, out, err = await inferbus(
            "nodes", "--server", nats_server.url, "--prefix", prefix, "--json"
        )

    assert code == 0, err
    listed = json.loads(out)
    assert [node["node_id"] for node in listed] == ["gpu-a", "gpu-bb-02"]
    assert Capabilities.model_validate(listed[0]) == GPU_A


async def test_nodes_prints_the_table_and_exits_0(nats_server: NatsServer) -> None:
    prefix = fleet_prefix()
    async with responders(
        nats_server.url, Subjects(prefix).discover(), [replies_with(encode_capabilities(GPU_A))]
    ):
        code, out, err = await inferbus("nodes", "--server", nats_server.url, "--prefix", prefix)

    assert code == 0, err
    assert out.startswith("gpu-a  ")
    assert "    ollama@http://10.0.0.5:11434  healthy    3ms  2 models" in out
    assert "    qwen3:8b  llm     ollama  running" in out


@pytest.mark.parametrize("as_json", [False, True])
async def test_nodes_exits_1_when_nobody_answers(nats_server: NatsServer, as_json: bool) -> None:
    prefix = fleet_prefix()
    args = ["nodes", "--server", nats_server.url, "--prefix", prefix, "--wait", "2"]
    code, out, _ = await inferbus(*args, *(["--json"] if as_json else []))

    assert code == 1
    if as_json:
        assert json.loads(out) == []
    else:
        assert out.strip() == f"no nodes answered on {prefix}.ncs.discover"


async def test_nodes_exits_2_with_a_clear_message_when_nats_is_unreachable() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    code, out, err = await inferbus("nodes", "--server", url)

    assert code == 2
    assert out == ""
    assert err.startswith(f"cannot reach NATS at {url}: ")
    assert "Traceback" not in err
