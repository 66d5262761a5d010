"""The caller's side of a streamed job over NATS (DESIGN §5).

Publish the job with a fresh inbox as its reply subject; the worker sends numbered chunks
there, then one final JobResponse (`done: true`). The caller enforces a first-token
timeout, an idle timeout between messages and the overall deadline, and turns each of
them (and "no responders") into a final answer of its own, so a stream always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.errors import ErrorCode, InferbusError
from services.wire import Chunk, JobRequest, JobResponse, decode_response, encode

_NO_RESPONDERS = "503"


@dataclass(frozen=True)
class StreamLimits:
    first_token_s: float  # from sending to the first chunk (or the final answer)
    idle_s: float  # between two messages after that
    deadline_s: float  # overall, on the loop's clock


@dataclass(frozen=True)
class StreamFailure:
    """How a stream ended without the worker's final answer, for breakers and failover."""

    no_responders: bool = False
    timed_out: bool = False
    before_first_token: bool = True


StreamEvent = Chunk | JobResponse


async def request_stream(
    nc: NatsClient, subject: str, job: JobRequest, limits: StreamLimits
) -> AsyncIterator[tuple[StreamEvent, StreamFailure | None]]:
    """Yield chunks in order, then exactly one final JobResponse (with the failure, if
    the stream ended on the caller's side). Chunks out of order are put back in order;
    a gap that never fills ends the stream at the idle timeout."""
    loop = asyncio.get_running_loop()
    # Unguessable (nats-py's new_inbox() is a predictable sequence): only the node that got
    # the job knows where to answer, and its answers must name the job.
    inbox = f"_INBOX.{secrets.token_hex(16)}"
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def enqueue(msg: Msg) -> None:
        queue.put_nowait(msg)

    subscription = await nc.subscribe(inbox, cb=enqueue)
    try:
        payload = encode(job.model_copy(update={"stream": True}))
        try:
            await nc.publish(subject, payload, reply=inbox)
        except nats.errors.MaxPayloadError:
            error = InferbusError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the job is over the bus limit of {nc.max_payload} bytes",
            )
            yield _final(job, error), StreamFailure()
            return
        except (nats.errors.Error, OSError) as exc:
            error = InferbusError(ErrorCode.BACKEND_UNAVAILABLE, f"bus error: {type(exc).__name__}")
            yield _final(job, error), StreamFailure(no_responders=True)
            return
        next_seq, early, first = 1, dict[int, Chunk](), True
        while True:
            wait = limits.first_token_s if first else limits.idle_s
            wait = min(wait, limits.deadline_s - loop.time())
            try:
                if wait <= 0:
                    raise TimeoutError
                if queue.empty():
                    async with asyncio.timeout(wait):  # no task per message, unlike wait_for
                        msg = await queue.get()
                else:
                    msg = queue.get_nowait()
            except TimeoutError:
                what = "first token" if first else "next token"
                failure = StreamFailure(timed_out=True, before_first_token=first)
                error = InferbusError(
                    ErrorCode.DEADLINE_EXCEEDED, f"no {what} from {subject} in time"
                )
                yield _final(job, error), failure
                return
            if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
                error = InferbusError(
                    ErrorCode.BACKEND_UNAVAILABLE, f"no worker listens on {subject}"
                )
                yield _final(job, error), StreamFailure(no_responders=True)
                return
            event = _event_of(msg.data)
            if event.job_id not in (job.job_id, ""):  # "": an unreadable answer, as an error
                continue
            if isinstance(event, JobResponse):
                yield event, None
                return
            first = False
            early[event.seq] = event
            while next_seq in early:
                yield early.pop(next_seq), None
                next_seq += 1
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


def _event_of(data: bytes) -> StreamEvent:
    """A chunk (it has `seq` and `delta`), else the final answer."""
    try:
        return Chunk.model_validate_json(data)
    except ValueError:
        return decode_response(data)


def _final(job: JobRequest, error: InferbusError) -> JobResponse:
    return JobResponse.failure(job.job_id, error, done=True)
