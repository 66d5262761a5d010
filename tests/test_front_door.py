"""What a new user meets first: `make run` and `inferbus up` in a terminal, the help of
every command, and the reasons `up` gives when one of its processes stops."""

from __future__ import annotations

import asyncio
import logging
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.localnet import free_port
from services.nats_server import NatsServer
from services.reachability import FIX, NatsOutage
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import until
from tools.children import exit_cause, telling
from tools.simulator import Simulator
from tools.simulator.cli import _parser as simulator_parser
from tools.up import failover_demo, job_examples

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ('{"level": "info", "msg": "connected to nats; 1 nodes known"}', None),
        ('{"level": "warning", "msg": "nats not reachable"}', None),
        ('{"level": "error", "msg": "NATS start-up failed: x"}', "NATS start-up failed: x"),
        ('{"level": "critical", "msg": "boom"}', "boom"),
        ('{"msg": "stopping on SIGTERM", "signal": "SIGTERM"}', "stopping on SIGTERM"),
        ("inferbus router: port 8090 is in use", "inferbus router: port 8090 is in use"),
        ("RuntimeError: boom", "RuntimeError: boom"),
        ("{not json", "{not json"),
        ("", None),
    ],
)  # fmt: skip
def test_only_lines_that_can_say_why_a_process_stops_are_kept(line: str, said: str | None) -> None:
    assert telling(line) == said


@pytest.mark.parametrize(
    ("returncode", "said", "cause"),
    [
        (-9, "", "killed by SIGKILL"),
        (-15, "stopping on SIGTERM", "killed by SIGTERM"),
        (0, "stopping on SIGTERM", "exit 0: stopping on SIGTERM"),
        (2, "inferbus router: port 8090 is in use", "exit 2: inferbus router: port 8090 is in use"),
        (1, "", "exit 1"),
        (None, "", "still running"),
    ],
)  # fmt: skip
def test_an_exit_is_told_by_its_signal_or_its_code_and_telling_line(
    returncode: int | None, said: str, cause: str
) -> None:
    assert exit_cause(returncode, said) == cause


def test_the_printed_jobs_put_the_nats_cli_last_and_say_it_must_be_installed() -> None:
    lines = job_examples("http://127.0.0.1:8090", "nats://127.0.0.1:4222", "local", "inferbus")
    ours = next(i for i, line in enumerate(lines) if line.startswith("  inferbus req local"))
    theirs = next(i for i, line in enumerate(lines) if line.startswith("  nats req"))
    assert ours < theirs
    assert lines[theirs - 1].startswith("With the NATS CLI installed")


def test_the_failover_demo_names_the_node_taking_the_jobs_and_how_long_stale_takes() -> None:
    text = "\n".join(failover_demo("http://127.0.0.1:8090", "local", 4242))
    assert "node 'local' takes the jobs" in text
    assert "kill 4242 " in text
    assert "kill -9 4242 " in text
    assert "stale: true within 6 s" in text


def options_without_help(help_text: str) -> list[str]:
    """The options a `--help` lists with no words about them."""
    section = help_text.split("options:", 1)[1]
    bare = []
    lines = section.splitlines()
    for index, line in enumerate(lines):
        entry = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if entry is None:
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        continued = following.startswith(" " * 8) and not following.strip().startswith("-")
        if entry.group(2) is None and not continued:
            bare.append(entry.group(1))
    return bare


@pytest.mark.parametrize(
    "argv",
    [["up", "--help"], ["nodes", "--help"], ["simulate", "--help"], ["req", "--help"]],
)
def test_help_describes_every_option(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100"},
        check=False,
    )
    assert done.returncode == 0
    assert options_without_help(done.stdout) == []
    assert f"usage: inferbus {argv[0]}" in done.stdout


def test_the_simulator_names_itself_as_it_was_started() -> None:
    assert simulator_parser("inferbus simulate").prog == "inferbus simulate"


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_up_refuses_fewer_than_one_worker(workers: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "up", "--workers", workers],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers" in done.stderr
    assert not (tmp_path / ".inferbus").exists()  # nothing was started


def read_until(fd: int, marker: bytes, timeout_s: float) -> bytes:
    """What the terminal shows until `marker` (AssertionError with it all on timeout)."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        assert time.monotonic() < deadline, seen.decode(errors="replace")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closed: everything on it has exited
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_make_run_exits_0_on_ctrl_c_in_a_terminal(tmp_path: Path) -> None:
    """Ctrl-C typed into the terminal reaches its whole foreground process group: `make`
    as well as `inferbus up`. Played here with a real pseudo-terminal."""
    venv = Path(sys.executable).parent.parent
    args = f"--nats-port {free_port()} --http-port {free_port()} --data-dir {tmp_path / 'data'}"
    # `-o setup`: the venv is the test's own; make must not try to build one.
    argv = ["make", "-s", "-o", "setup", "run", f"VENV={venv}", f"ARGS={args}"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own whose terminal is the pty
        os.chdir(ROOT)
        os.execvp("make", argv)
    status: int | None = None
    try:
        shown = read_until(fd, b"Ctrl-C stops everything", 90)
        os.write(fd, b"\x03")  # what the terminal sends for Ctrl-C
        shown += read_until(fd, b"\nstopped", 60)
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:  # `up` stops on the hangup that closing the terminal sends
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, shown.decode(errors="replace")
    assert b"Interrupt" not in shown


def test_an_outage_is_said_when_it_begins_once_a_minute_and_when_it_ends() -> None:
    outage = NatsOutage("nats://127.0.0.1:4222")
    said = [
        (now, outage.failed("ConnectionRefusedError", now))
        for now in [0.5 * step for step in range(0, 250)]  # 125 s, two attempts a second
    ]
    lines = [(now, line) for now, line in said if line is not None]
    assert [now for now, _ in lines] == [0.0, 60.0, 120.0]
    assert lines[0][1] == (
        "nats not reachable at nats://127.0.0.1:4222 (ConnectionRefusedError); "
        "retrying: start nats-server or check nats_url"
    )
    assert "still not reachable" in lines[1][1]
    assert "after 60 s (121 attempts" in lines[1][1]
    assert outage.reached(130.0) == (
        "nats reached at nats://127.0.0.1:4222 after 130 s and 250 failed attempts"
    )
    assert outage.reached(131.0) is None  # said once
    assert outage.failed("again", 200.0) is not None  # a new outage is said at once


def test_nothing_is_said_when_nats_was_never_away() -> None:
    assert NatsOutage("nats://x").reached(1.0) is None


async def test_router_and_worker_say_once_that_nats_is_away_and_once_that_it_is_back(
    simulator: Simulator,
    start_router: RouterFactory,
    start_worker: WorkerFactory,
    node_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    worker_started, test_done = asyncio.Event(), asyncio.Event()

    async def run_worker() -> None:
        async with start_worker(nats_url=[url], backends=[backend(simulator.url)]):
            worker_started.set()
            await test_done.wait()

    async with start_router(nats_url=[url]) as router:
        worker = asyncio.create_task(run_worker())
        try:
            await asyncio.sleep(3)  # about six failed attempts each, at 0.5 s
            away = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
            async with NatsServer(port=port):
                await asyncio.wait_for(worker_started.wait(), 30)
                await until(lambda: node_id in router.fleet.nodes, timeout_s=15)
        finally:
            test_done.set()
            await worker
    back = [r.getMessage() for r in caplog.records if r.getMessage().startswith("nats reached")]
    assert len(away) == 2  # one each
    assert all(FIX in line for line in away)
    assert len(back) == 2


async def test_a_worker_names_a_runtime_it_cannot_reach_at_start_with_its_error(
    simulator: Simulator,
    start_worker: WorkerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    nobody = f"http://127.0.0.1:{free_port()}"
    async with start_worker(backends=[backend(nobody), backend(simulator.url)]):
        pass
    said = [record.getMessage() for record in caplog.records]
    named = [line for line in said if line.startswith(f"backend ollama at {nobody} is")]
    assert len(named) == 1
    assert named[0].startswith(f"backend ollama at {nobody} is unhealthy: BACKEND_UNAVAILABLE")
    assert any("serving 2 models from 1 of 2 runtimes" in line for line in said)
