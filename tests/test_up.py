"""`inferbus up` as a new user runs it: the printed job works, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx

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


async def test_up_serves_the_printed_examples_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    nats_port = free_port()
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "up",
        "--nats-port",
        str(nats_port),
        "--http-port",
        str(free_port()),
        "--workers",
        "2",
        "--node-id",
        "demo",
        "--data-dir",
        str(tmp_path / "data"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert up.stdout is not None
    printed: list[str] = []
    async with asyncio.timeout(60):
        while "Ctrl-C" not in (line := (await up.stdout.readline()).decode()):
            assert line, f"inferbus up exited early:\n{''.join(printed)}"
            printed.append(line)
    example = next(line.strip() for line in printed if line.strip().startswith("inferbus req"))
    children = children_of(up.pid)
    assert len(children) >= 3  # nats-server, the worker, the router (and the simulator here)

    _, job = example.split(" req ", 1)
    target, text = job.split(" ", 1)
    req = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "req",
        target,
        text.strip("'"),
        "--server",
        f"nats://127.0.0.1:{nats_port}",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(req.communicate(), 30)
    assert req.returncode == 0, err.decode()
    assert out.strip()
    assert "demo" in err.decode()

    curl = next(line.strip() for line in printed if line.strip().startswith("curl "))
    shell = await asyncio.create_subprocess_exec(
        "bash", "-c", curl, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    curl_out, _ = await asyncio.wait_for(shell.communicate(), 30)
    completion = json.loads(curl_out)
    assert completion["choices"][0]["message"]["content"]
    assert completion["route"]["via"] == "remote"
    assert completion["route"]["node"] == "demo"

    router_url = curl.split()[2].rsplit("/v1/", 1)[0]
    async with httpx.AsyncClient() as http:
        nodes = (await http.get(f"{router_url}/nodes")).json()["nodes"]
    assert sorted(node["node_id"] for node in nodes) == ["demo", "demo-2"]

    up.send_signal(signal.SIGINT)
    await asyncio.wait_for(up.wait(), 30)
    assert up.returncode == 0
    assert [pid for pid in children if alive(pid)] == []
