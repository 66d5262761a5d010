"""Small NATS helpers shared by every process."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NatsClient


async def flush_interest(nc: NatsClient, timeout_s: float = 10) -> None:
    """Return once the server has every subscription made so far on this connection.

    nats-py 2.16 writes the PING of `flush()` straight to the socket, ahead of commands
    still in its pending buffer, so one round trip can come back before a new SUB has
    left the process (seen here: a job sent right after start got "no responders").
    The first round trip lets the flusher write the buffer; the second one is behind it.
    """
    await nc.flush(timeout=int(timeout_s))
    await nc.flush(timeout=int(timeout_s))


async def wait_for_worker(nc: NatsClient, subject: str, timeout_s: float = 30) -> None:
    """Return once a worker answers on `subject` (an empty job gets BAD_REQUEST back)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await nc.request(subject, b"{}", timeout=0.5)
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
