"""The one shape of everything long-lived here: `start()`, an idempotent `stop()`, and
`async with thing:` doing both (CONVENTIONS §6); and how a process is told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import TracebackType
from typing import Self


class AsyncService:
    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def stop_on_signals(stop: asyncio.Event, log: logging.Logger) -> None:
    """SIGTERM and SIGINT set `stop`, saying which came: the process's last words then
    tell a supervisor (`inferbus up`, systemd's journal) why it stopped."""
    loop = asyncio.get_running_loop()

    def stopping(signum: signal.Signals) -> None:
        if not stop.is_set():
            log.info("stopping on %s", signum.name, extra={"signal": signum.name})
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping, signum)
