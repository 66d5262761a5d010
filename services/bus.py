"""Small NATS helpers shared by every process.

Errors raised here, for the process edge to turn into an exit code:

    BusUnreachable   a one-shot command could not reach NATS (exit 2 in the CLI)
    BusAuthRefused   the server refused our credentials: retrying cannot help (exit 2)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from services.settings import NatsAuth

# Headers JetStream puts on every stored message it hands out (a direct get, a republish).
# A process publishes its heartbeats without them.
_JETSTREAM_HEADERS = ("Nats-Stream", "Nats-Subject", "Nats-Sequence")


def relayed_by_jetstream(headers: dict[str, str] | None) -> bool:
    """Whether a message was handed out by JetStream rather than published by a process.

    JetStream sends its answers to whatever reply subject the asker names, from the
    server's own connection, past the asker's publish permissions: credentials granted a
    direct get on a bucket (a router's; shipped workers hold no JetStream grant) can have
    a value they wrote there delivered to `ncs.capabilities.<node>`. Such a message
    carries JetStream's headers.
    """
    return headers is not None and any(name in headers for name in _JETSTREAM_HEADERS)


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
    """Return once a worker answers on `subject`.

    On a job subject the empty job gets BAD_REQUEST back, which the worker's `$SRV` stats
    count as an error; probe `node.<id>.caps` where that matters (`inferbus up` does).
    """
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await nc.request(subject, b"{}", timeout=0.5)
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)


# What nats-server says when it refuses a connection's identity. nats-py hands these over
# as plain `nats.errors.Error("nats: 'Authorization Violation'")` during the first connect
# and as `AuthorizationError` later, and keeps retrying either way.
_AUTH_REFUSALS = (
    "authorization violation",
    "authentication timeout",
    "authentication expired",
    "user authentication revoked",
    "account authentication expired",
)


def is_auth_refusal(error: BaseException) -> bool:
    """True when NATS refused our credentials (a config error), not a network fault."""
    if isinstance(error, nats.errors.AuthorizationError):
        return True
    text = str(error).lower()
    return any(refusal in text for refusal in _AUTH_REFUSALS)


class BusAuthRefused(Exception):
    """NATS refused the configured credentials; the message carries the server's words."""


ErrorCallback = Callable[[Exception], Awaitable[None]]


async def connect_until_stopped(
    stop: asyncio.Event, *, error_cb: ErrorCallback | None = None, **options: Any
) -> NatsClient | None:
    """`nats.connect(**options)` that waits for NATS as long as it takes, but not longer
    than the process wants to live.

    With `max_reconnect_attempts=-1` nats-py retries the first connect forever inside
    `connect()`, deaf to signals; this races it against `stop` (None when stop wins) and
    against an auth refusal seen by the error callback (`BusAuthRefused`: under systemd,
    exit 2 ends the restart loop that a wrong password would otherwise be).
    """
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[BaseException] = loop.create_future()
    connected = False

    async def on_error(error: Exception) -> None:
        if not connected and is_auth_refusal(error):
            if not refused.done():
                refused.set_result(error)
            return
        if error_cb is not None:
            await error_cb(error)

    connecting = asyncio.create_task(nats.connect(error_cb=on_error, **options))
    stopping = asyncio.create_task(stop.wait())
    try:
        contenders: set[asyncio.Future[Any]] = {connecting, stopping, refused}
        await asyncio.wait(contenders, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        connected = True  # later refusals (a reload with new credentials) go to error_cb
        return connecting.result()
    await cancel_until_done(connecting)
    if refused.done():
        raise BusAuthRefused(describe(refused.result()))
    if not stop.is_set():
        # nats.connect gave up by itself (a setting without retries): its own error.
        error = None
        if connecting.done() and not connecting.cancelled():
            error = connecting.exception()
        if error is not None:
            raise error
    return None


async def cancel_until_done(task: asyncio.Task[Any], *, patience_s: float = 5.0) -> None:
    """Cancel `task` again and again until it has ended (or `patience_s` has passed).

    One cancellation of nats-py's connect loop can be lost: Python 3.11's `asyncio.wait_for`
    returns the inner result when it is already there as the cancellation arrives (a
    refused connection is), nats-py takes that OSError as one more failed attempt and
    tries again, and the process then hangs at its exit, where the loop waits for every
    task it cancelled once.
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + patience_s
    while not task.done() and loop.time() < give_up_at:
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)


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
