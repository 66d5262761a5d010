"""Small NATS helpers shared by every process."""

from __future__ import annotations

import asyncio
import os

import nats
from nats.aio.client import Client as NatsClient

from services.settings import NatsAuth


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


class BusUnreachable(Exception):
    """A one-shot command could not reach NATS; the message says why."""


async def connect_once(nats_url: str) -> NatsClient:
    """Connect for a one-shot command (`inferbus req`, `inferbus nodes`): fail fast, clearly.

    Credentials and TLS come from `INFERBUS_NATS__USER`, `__PASSWORD`, `__TOKEN`,
    `__CREDS_FILE`, `__NKEY_SEED_FILE`, `__TLS_CA_FILE`...

    nats-py 2.16 reads max_reconnect_attempts=0 as "retry forever" in its server pool;
    1 gives up after two quick attempts. The real cause only reaches `error_cb`.
    """
    causes: list[Exception] = []

    async def remember(error: Exception) -> None:
        causes.append(error)

    try:
        return await nats.connect(
            nats_url,
            **NatsAuth.from_env(os.environ).connect_options(),
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=remember,
        )
    except (OSError, TimeoutError, nats.errors.Error) as error:
        cause = causes[-1] if causes else error
        raise BusUnreachable(f"cannot reach NATS at {nats_url}: {describe(cause)}") from error


def describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
