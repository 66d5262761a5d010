"""The NATS edge of the router: one job to one node, within a budget.

Translates nats-py's no-responders and timeout into our answers once, here, and says
which of the two happened so the breaker can count it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NatsClient

from services.errors import ErrorCode, InferbusError
from services.wire import JobRequest, JobResponse, decode_response, encode


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
