"""The NATS edge of the router: one job to one node, within a budget, whole or streamed.

Translates nats-py's no-responders and timeout into our answers once, here, and says
which of the two happened so the breaker can count it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NatsClient

from services.errors import ErrorCode, InferbusError
from services.streaming import StreamLimits, request_stream
from services.wire import Chunk, JobRequest, JobResponse, decode_response, encode


@dataclass(frozen=True)
class Offloaded:
    response: JobResponse
    elapsed_ms: float
    no_responders: bool = False
    timed_out: bool = False


async def offload(
    nc: NatsClient,
    subject: str,
    job: JobRequest,
    *,
    model: str,
    timeout_s: float,
    budget_ms: float,
) -> Offloaded:
    """Send `job` for `model`, `budget_ms` left as its `timeout_ms`; wait at most `timeout_s`."""
    started = time.perf_counter()
    payload = encode(job.model_copy(update={"model": model, "timeout_ms": max(1, int(budget_ms))}))
    try:
        msg = await nc.request(subject, payload, timeout=timeout_s)
    except nats.errors.NoRespondersError:
        return Offloaded(
            _failure(job, ErrorCode.BACKEND_UNAVAILABLE, f"no worker listens on {subject}"),
            _ms_since(started),
            no_responders=True,
        )
    except nats.errors.TimeoutError:
        return Offloaded(
            _failure(
                job,
                ErrorCode.DEADLINE_EXCEEDED,
                f"no answer on {subject} within {timeout_s * 1000:.0f} ms",
            ),
            _ms_since(started),
            timed_out=True,
        )
    except nats.errors.MaxPayloadError:
        return Offloaded(
            _failure(
                job,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the job is over the bus limit of {nc.max_payload} bytes",
            ),
            _ms_since(started),
        )
    except (nats.errors.Error, OSError) as exc:  # connection closed, draining, ...
        return Offloaded(
            _failure(job, ErrorCode.BACKEND_UNAVAILABLE, f"bus error: {type(exc).__name__}"),
            _ms_since(started),
            no_responders=True,
        )
    return Offloaded(decode_response(msg.data), _ms_since(started))


def _failure(job: JobRequest, code: ErrorCode, message: str) -> JobResponse:
    return JobResponse.failure(job.job_id, InferbusError(code, message))


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


async def stream_offload(
    nc: NatsClient,
    subject: str,
    cancel_subject: str,
    job: JobRequest,
    *,
    model: str,
    budget_ms: float,
    limits: StreamLimits,
    on_delta: Callable[[str], Awaitable[None]],
) -> tuple[Offloaded, int]:
    """Stream `job` from one node, handing each delta on as it arrives.

    Returns the final answer and how many deltas went out. Whenever the router stops
    listening before the node's own final answer (a timeout here, or the caller going
    away), the node is told to cancel, so its GPU stops generating.
    """
    started = time.perf_counter()
    delivered = 0
    finished = False
    request = job.model_copy(update={"model": model, "timeout_ms": max(1, int(budget_ms))})
    try:
        async for event, failure in request_stream(nc, subject, request, limits):
            if isinstance(event, Chunk):
                delivered += 1
                await on_delta(event.delta)
                continue
            finished = failure is None
            return Offloaded(
                event,
                _ms_since(started),
                no_responders=bool(failure and failure.no_responders),
                timed_out=bool(failure and failure.timed_out),
            ), delivered
        raise AssertionError("request_stream always ends with a final answer")
    finally:
        if not finished:
            with contextlib.suppress(Exception):
                await nc.publish(cancel_subject, json.dumps({"job_id": job.job_id}).encode())
