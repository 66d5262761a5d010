"""The processes `inferbus up` starts: each with a role, its stderr relayed to ours line by
line (so why one of them stopped can be quoted), waited for against its own exit, and
stopped in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Child:
    """A process `up` started: what to call it, and the last things it said that may tell
    why it stops (see `telling`)."""

    role: str  # "simulator", "worker 'local-2'", "router"
    process: asyncio.subprocess.Process
    restart: str | None = None  # the command that starts it again by hand
    last_words: deque[str] = field(default_factory=lambda: deque(maxlen=3))

    def cause(self) -> str:
        """Why it exited, in one line: the signal that killed it, or its exit code and the
        last telling line it wrote (an error, the signal it stopped on, a traceback's end)."""
        return exit_cause(self.process.returncode, self.last_words[-1] if self.last_words else "")


def exit_cause(returncode: int | None, said: str) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exit {returncode}: {said}" if said else f"exit {returncode}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class ChildExited(Exception):
    """A child `up` waits for exited first; its role and cause are in the message."""

    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.role} (pid {child.process.pid}) exited, {child.cause()}")
        self.child = child


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while `up` was still starting its children."""


class Children:
    """Every process `up` started, with their stderr relayed to ours line by line (so the
    last words of one that dies can be quoted), stopped in reverse order."""

    def __init__(self, stop: asyncio.Event) -> None:
        """`stop` is the signal: waiting for a child to be ready ends when it is set."""
        self._stop = stop
        self.all: list[Child] = []
        self._relays: list[asyncio.Task[None]] = []

    async def spawn(
        self, role: str, *argv: str, restart: str | None = None, stdout: int | None = None
    ) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        child = Child(role, process, restart)
        self.all.append(child)
        self._relays.append(asyncio.create_task(self._relay(child)))
        return child

    @staticmethod
    async def _relay(child: Child) -> None:
        assert child.process.stderr is not None
        while line := await child.process.stderr.readline():
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
            said = telling(line.decode(errors="replace").strip())
            if said:
                child.last_words.append(said)

    async def until(self, child: Child, ready: Coroutine[Any, Any, T]) -> T:
        """`ready`'s result; ChildExited the moment `child` exits first, Interrupted the
        moment the stop signal comes first."""
        waiting = asyncio.ensure_future(ready)
        exited = asyncio.ensure_future(child.process.wait())
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({waiting, exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        stopping.cancel()
        if waiting.done():
            return waiting.result()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        if self._stop.is_set():
            raise Interrupted
        await self.settled(child)
        raise ChildExited(child)

    async def settled(self, child: Child) -> None:
        """Wait (briefly) for the relay to read the last stderr lines of an exited child."""
        relay = self._relays[self.all.index(child)]
        await asyncio.wait({relay}, timeout=1)

    async def stop_all(self) -> None:
        for child in reversed(self.all):
            await stop_process(child.process)
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)


_TELLING_LEVELS = frozenset({"error", "critical"})


def telling(line: str) -> str | None:
    """What a stderr line says about why its process may stop, or None when it says
    nothing about that. Our processes log JSON: an error, or the signal they stop on
    (`signal` field), tells; info and warnings do not. Anything else is printed on the way
    out (`inferbus router: port 8090 is in use`, a traceback, whose last line is the
    error), so it tells."""
    if not line:
        return None
    if not line.startswith("{"):
        return line
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or not isinstance(message := record.get("msg"), str):
        return line
    if record.get("level") in _TELLING_LEVELS or "signal" in record:
        return message
    return None


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, 10 s to exit, then SIGKILL."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
