"""`inferbus up` as a new user runs it: the printed job works, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import nats

from services.localnet import free_port

ROOT = Path(__file__).resolve().parent.parent


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def up_command(nats_port: int, http_port: int, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tools.cli",
        "up",
        "--nats-port",
        str(nats_port),
        "--http-port",
        str(http_port),
        "--data-dir",
        str(data_dir),
        *extra,
    ]


async def start_up(*argv: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """`inferbus up` until it says Ctrl-C; the process and what it printed."""
    up = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert up.stdout is not None
    printed: list[str] = []
    async with asyncio.timeout(60):
        while "Ctrl-C" not in (line := (await up.stdout.readline()).decode()):
            assert line, f"inferbus up exited early:\n{''.join(printed)}"
            printed.append(line)
    return up, printed


async def run_to_the_end(*argv: str) -> tuple[int, str, str]:
    """A command that is expected to exit by itself: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def shell(line: str) -> tuple[int, str, str]:
    """A printed command line, run as pasted into a shell in the project directory."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        line,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def pid_of(printed: list[str], node_id: str) -> int:
    line = next(line for line in printed if line.startswith(f"worker: node {node_id!r} pid "))
    return int(line.split(" pid ", 1)[1].split()[0])


async def test_up_serves_the_printed_examples_survives_a_killed_worker_and_ctrl_c_stops_all(
    tmp_path: Path,
) -> None:
    nats_port = free_port()
    up, printed = await start_up(
        *up_command(
            nats_port, free_port(), tmp_path / "data", "--workers", "2", "--node-id", "demo"
        )
    )
    assert up.stdout is not None
    children = children_of(up.pid)
    assert len(children) >= 3  # nats-server, the worker, the router (and the simulator here)

    # The printed `inferbus req` line runs as pasted, on the NATS port given.
    example = next(line.strip() for line in printed if " req demo " in line)
    assert f"--server nats://127.0.0.1:{nats_port}" in example
    code, out, err = await shell(example)
    assert code == 0, err
    assert out.strip()
    assert "demo" in err

    curl = next(line.strip() for line in printed if line.strip().startswith("curl -s http"))
    code, curl_out, _ = await shell(curl)
    completion = json.loads(curl_out)
    assert completion["choices"][0]["message"]["content"]
    assert completion["route"]["via"] == "remote"
    assert completion["route"]["node"] == "demo"

    router_url = curl.split()[2].rsplit("/v1/", 1)[0]
    async with httpx.AsyncClient() as http:
        nodes = (await http.get(f"{router_url}/nodes")).json()["nodes"]
    assert sorted(node["node_id"] for node in nodes) == ["demo", "demo-2"]

    # The failover demo names the node taking the jobs, by the PID to kill.
    assert f"  kill {pid_of(printed, 'demo')} " in "".join(printed)
    assert any(line.startswith("Failover: node 'demo' takes the jobs") for line in printed)

    # Kill one worker's PID; up says so and keeps the rest running.
    killed = pid_of(printed, "demo-2")
    assert killed in children
    os.kill(killed, signal.SIGKILL)
    async with asyncio.timeout(30):
        while "exited" not in (line := (await up.stdout.readline()).decode()):
            assert line, "inferbus up exited after one worker died"
    assert "worker 'demo-2'" in line
    assert "killed by SIGKILL" in line
    restart = (await up.stdout.readline()).decode()
    assert "To restart it:" in restart
    assert up.returncode is None
    code, curl_out, _ = await shell(curl)
    assert json.loads(curl_out)["route"]["node"] == "demo"

    up.send_signal(signal.SIGINT)
    await asyncio.wait_for(up.wait(), 30)
    assert up.returncode == 0
    assert [pid for pid in children if alive(pid)] == []


async def test_up_probe_is_not_counted_as_a_bad_request(tmp_path: Path) -> None:
    nats_port = free_port()
    up, _ = await start_up(*up_command(nats_port, free_port(), tmp_path / "data"))
    try:
        nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
        try:
            reply = await nc.request("$SRV.STATS.inferbus-node", b"", timeout=5)
        finally:
            await nc.close()
        stats = json.loads(reply.data)
        llm = next(e for e in stats["endpoints"] if e["name"] == "llm")
        assert (llm["num_requests"], llm["num_errors"], llm["last_error"]) == (0, 0, "")
    finally:
        up.send_signal(signal.SIGINT)
        await asyncio.wait_for(up.wait(), 30)


async def test_a_second_up_on_the_same_nats_refuses_to_start_the_same_node_id(
    tmp_path: Path,
) -> None:
    nats_port = free_port()
    first, _ = await start_up(*up_command(nats_port, free_port(), tmp_path / "one"))
    try:
        code, out, _ = await run_to_the_end(*up_command(nats_port, free_port(), tmp_path / "two"))
        assert code == 2
        assert "node id 'local' already runs" in out
        assert first.returncode is None
    finally:
        first.send_signal(signal.SIGINT)
        await asyncio.wait_for(first.wait(), 30)


async def test_up_with_the_http_port_taken_says_so_at_once_and_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_to_the_end(*up_command(free_port(), port, tmp_path / "data"))
    assert code == 2
    assert f"port {port} is in use" in out
    assert "Traceback" not in err


async def test_up_help_names_every_process_it_starts() -> None:
    code, text, _ = await run_to_the_end(sys.executable, "-m", "tools.cli", "up", "--help")
    assert code == 0
    for part in ("nats-server", "worker", "simulator", "router", "--http-port"):
        assert part in text


async def test_up_with_a_bad_node_id_says_so_and_exits_2(tmp_path: Path) -> None:
    argv = up_command(free_port(), free_port(), tmp_path / "data", "--node-id", "gpu a")
    code, out, err = await run_to_the_end(*argv)
    assert code == 2
    assert "not a subject-safe token" in out
    assert "Traceback" not in err
