"""Serving a request from a runtime over HTTP, without a node in between: the router
node's own runtime (works when the bus is down) or a profile's static `base_url`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from router.route import FINAL_CODES, Attempt, Route, Via
from services.errors import InferbusError
from services.runtimes.base import ChatCall, Runtime
from services.runtimes.calls import chat_within, clean_text, stream_within
from services.wire import JobRequest, JobResponse, Result, Timings

DeltaSink = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Direct:
    via: Via
    runtime: Runtime
    model: str
    node: str | None  # the router's local node, for `route`
    reason: str  # why the request came here (fallback_reason)


async def serve_directly(
    target: Direct, job: JobRequest, left_s: float, route: Route, on_delta: DeltaSink | None
) -> JobResponse | None:
    """The answer, or None to go on: failures before any token are not final."""
    started = time.perf_counter()
    call = ChatCall(target.model, job.chat_messages(), job.params)
    delivered = 0

    async def counted(delta: str) -> None:
        nonlocal delivered
        delivered += 1
        assert on_delta is not None
        await on_delta(delta)

    done = True if on_delta is not None else None
    try:
        if on_delta is None:
            reply = await chat_within(target.runtime, call, left_s)
        else:
            reply = await stream_within(target.runtime, call, left_s, counted)
    except InferbusError as error:
        elapsed = _ms(started)
        route.attempts.append(
            Attempt(via=target.via, node=None, model=target.model, outcome=error.code, ms=elapsed)
        )
        if error.code in FINAL_CODES or delivered > 0:
            route.via, route.model = target.via, target.model
            return JobResponse.failure(
                job.job_id, error, model=target.model, runtime=target.runtime.kind, done=done
            )
        return None
    elapsed = _ms(started)
    route.attempts.append(
        Attempt(via=target.via, node=None, model=target.model, outcome="ok", ms=elapsed)
    )
    route.via, route.model, route.node = target.via, target.model, target.node
    route.fallback_reason = route.fallback_reason or target.reason
    return JobResponse(
        job_id=job.job_id,
        status="ok",
        node_id=target.node,
        model=target.model,
        runtime=target.runtime.kind,
        result=Result(
            text=clean_text(reply.text), finish_reason=reply.finish_reason, usage=reply.usage
        ),
        timings=Timings(backend_ms=elapsed, total_ms=elapsed),
        done=done,
    )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
