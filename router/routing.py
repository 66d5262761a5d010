"""One request's way through the router: select → offload → (next node | local | static).

Remote attempts go to the selected node over NATS with what is left of the budget; a
failure counts against that node's breaker and excludes it for this request; BUSY moves
on at once; an answer that is final (the request's own fault, or its budget spent) is
returned as is. After the remote attempts: the router node's own runtime over HTTP (works
without NATS), then the profile's static config or the hard default.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
from nats.aio.client import Client as NatsClient

from router.breakers import BreakerBoard, breaker_kind, outcome_of
from router.config import RouterSettings
from router.direct import Direct, serve_directly
from router.fleet import FleetView
from router.offload import Offloaded, offload, stream_offload
from router.route import FINAL_CODES, Attempt, Route
from router.selection import Selection, select
from services.capabilities import Capabilities
from services.deadlines import remaining_budget_ms
from services.errors import ErrorCode, InferbusError
from services.runtimes import make_runtime
from services.runtimes.base import Runtime, RuntimeKind
from services.streaming import StreamLimits
from services.subjects import Subjects
from services.wire import JobRequest, JobResponse, JobType

log = logging.getLogger("inferbus.router")

# How often a job waiting on a node checks that the node is still alive.
NODE_CHECK_S = 0.25

DeltaSink = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Serving:
    """One request on its way through the steps: what each of them needs."""

    job: JobRequest
    agent_id: str | None
    deadline: float  # on the router's clock
    route: Route
    on_delta: DeltaSink | None


def job_type_of(job: JobRequest) -> JobType:
    return job.type or ("vision" if job.has_images() else "llm")


class Router:
    def __init__(
        self,
        settings: RouterSettings,
        *,
        nc: NatsClient,
        fleet: FleetView,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.fleet = fleet
        self.breakers = BreakerBoard(settings.breakers)
        fleet.on_record(self._heard_from)
        fleet.on_forget(self.breakers.forget)
        self._subjects = Subjects(settings.subject_prefix)
        self._http = http
        self._clock = clock
        self._remote_slots = asyncio.Semaphore(settings.offload.remote_concurrency)
        local = settings.local_runtime
        self.local_runtime: Runtime | None = (
            make_runtime(local.kind, local.url, http, api_key=_env(local.api_key_env))
            if local is not None
            else None
        )

    async def infer(
        self, job: JobRequest, *, agent_id: str | None = None, on_delta: DeltaSink | None = None
    ) -> tuple[JobResponse, Route]:
        """Serve one request; always returns one answer, by its deadline.

        With `on_delta`, the answer is streamed: each piece of text goes to `on_delta` as
        the node produces it, and the returned answer ends the stream. Until the first
        piece, a failing node is left for the next one; after it, the stream ends with
        the error instead (switching would repeat text).
        """
        budget_ms = remaining_budget_ms(
            timeout_ms=job.timeout_ms,
            deadline_unix_ms=job.deadline_unix_ms,
            default_timeout_ms=self.settings.offload.default_budget_ms,
            now_unix_ms=time.time() * 1000.0,
        )
        deadline = self._clock() + budget_ms / 1000.0
        job = job.model_copy(update={"idempotency_key": job.key, "type": job_type_of(job)})
        route = Route()
        if budget_ms <= 0:
            return _fail(job, ErrorCode.DEADLINE_EXCEEDED, "the budget was spent on arrival"), route
        serving = Serving(job, agent_id, deadline, route, on_delta)
        for step in (self._remote, self._local, self._static):
            answer = await step(serving)
            if answer is not None:
                return answer, route
        if self._left_s(deadline) <= 0:
            return _fail(
                job, ErrorCode.DEADLINE_EXCEEDED, "the budget ran out before an answer"
            ), route
        last = route.attempts[-1].outcome if route.attempts else None
        reason = f"nothing could serve it (last attempt: {last})" if last else "nothing serves it"
        return _fail(job, ErrorCode.NO_ROUTE, f"{job.model or job.type} — {reason}"), route

    async def _remote(self, s: Serving) -> JobResponse | None:
        job, agent_id, deadline, route = s.job, s.agent_id, s.deadline, s.route
        kind = breaker_kind(job.type or "llm")
        tried: set[str] = set()
        for _ in range(self.settings.offload.attempts):
            now = self._clock()
            if self._left_s(deadline) <= 0:
                return None
            selection = select(
                self.settings.selection,
                self.fleet.index,
                agent_id=agent_id,
                request_model=job.model,
                exclude_nodes=frozenset(tried),
                excluded=partial(self.breakers.is_open, job_type=kind, now=now),
                job_type=job.type,
                now=self.fleet.clock(),
            )
            if selection is None or selection.source != "fleet" or selection.node is None:
                route.fallback_reason = route.fallback_reason or (
                    selection.fallback_reason if selection else "no node serves it"
                )
                return None
            node = selection.node
            tried.add(node)
            if not self.breakers.allows(node, kind, now):
                continue
            _describe(route, selection)
            answer = await self._offload_to(node, selection, s)
            if answer is not None:
                return answer
        return None

    async def _offload_to(self, node: str, selection: Selection, s: Serving) -> JobResponse | None:
        """One remote try; the answer if it ends the request, None to go on."""
        job, deadline, route, on_delta = s.job, s.deadline, s.route, s.on_delta
        kind = breaker_kind(job.type or "llm")
        left_s = self._left_s(deadline)
        timeout_s = min(left_s, self.settings.offload.attempt_timeout_ms / 1000.0)
        try:
            async with asyncio.timeout(left_s):
                await self._remote_slots.acquire()
        except TimeoutError:
            return None
        try:
            with self.fleet.job_on(node, selection.type):
                subject = self._subjects.job(node, job.type or "llm")
                budget_ms = self._left_s(deadline) * 1000.0
                delivered = 0
                if on_delta is None:
                    sent = await self._while_node_lives(
                        node,
                        kind,
                        offload(
                            self.nc,
                            subject,
                            job,
                            model=selection.model,
                            timeout_s=timeout_s,
                            budget_ms=budget_ms,
                        ),
                        job,
                    )
                else:
                    sent, delivered = await stream_offload(
                        self.nc,
                        subject,
                        self._subjects.cancel(node),
                        job,
                        model=selection.model,
                        budget_ms=budget_ms,
                        limits=self._stream_limits(deadline),
                        on_delta=on_delta,
                    )
        finally:
            self._remote_slots.release()
        response = sent.response
        code = response.error.code if response.error else None
        self.breakers.record(
            node,
            kind,
            outcome_of(code, no_responders=sent.no_responders, timed_out=sent.timed_out),
            self._clock(),
        )
        route.attempts.append(
            Attempt(
                via="remote",
                node=node,
                model=selection.model,
                outcome=code or "ok",
                ms=sent.elapsed_ms,
            )
        )
        if code is None or delivered > 0:
            route.via, route.node, route.model = "remote", node, selection.model
            return response
        if code in FINAL_CODES and not sent.timed_out:
            route.via, route.node, route.model = "remote", node, selection.model
            return response
        return None

    async def _while_node_lives(
        self, node: str, kind: str, request: Coroutine[Any, Any, Offloaded], job: JobRequest
    ) -> Offloaded:
        """Await a remote answer, but give up on a node that died meanwhile.

        A worker killed after taking a job never answers; NATS cannot tell the requester.
        Its breaker opening (other requests saw no responders) or its heartbeat going
        stale says so, and the job moves on within `NODE_CHECK_S` instead of waiting out
        its timeout.
        """
        started = time.perf_counter()
        pending = asyncio.ensure_future(request)
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=NODE_CHECK_S)
                if done:
                    return pending.result()
                if self._node_lost(node, kind):
                    message = f"node {node} was lost while the job ran there"
                    return Offloaded(
                        JobResponse.failure(
                            job.job_id, InferbusError(ErrorCode.BACKEND_UNAVAILABLE, message)
                        ),
                        _ms(started),
                        timed_out=True,
                    )
        finally:
            pending.cancel()

    def _heard_from(self, record: Capabilities) -> None:
        """A node announcing every runtime healthy gets a trial past an open breaker."""
        runtimes = [runtime for runtime in record.runtimes if runtime.state != "disabled"]
        if runtimes and all(runtime.state == "healthy" for runtime in runtimes):
            self.breakers.heard_from(record.node_id, self._clock())

    def _stream_limits(self, deadline: float) -> StreamLimits:
        left_s = self._left_s(deadline)
        offload = self.settings.offload
        return StreamLimits(
            first_token_s=min(left_s, offload.first_token_timeout_ms / 1000.0),
            idle_s=offload.idle_timeout_ms / 1000.0,
            deadline_s=asyncio.get_running_loop().time() + left_s,
        )

    def _node_lost(self, node: str, kind: str) -> bool:
        now = self._clock()
        view = self.fleet.nodes.get(node)
        return view is None or view.stale(now) or node in self.breakers.open_nodes(kind, now)

    async def _local(self, s: Serving) -> JobResponse | None:
        """The router node's own runtime, over HTTP, whatever the bus is doing."""
        job, agent_id, deadline = s.job, s.agent_id, s.deadline
        runtime = self.local_runtime
        if runtime is None or self._left_s(deadline) <= 0:
            return None
        selection = select(
            self.settings.selection,
            self.fleet.index,
            agent_id=agent_id,
            request_model=job.model,
            force_local=True,
            job_type=job.type,
            now=self.fleet.clock(),
        )
        model = selection.model if selection is not None else job.model
        if model is None:
            return None
        reason = (
            "remote attempts failed; local runtime"
            if s.route.attempts
            else "no remote node; local runtime"
        )
        return await self._direct(
            s, Direct("local", runtime, model, self.settings.local_node, reason)
        )

    async def _static(self, s: Serving) -> JobResponse | None:
        """The profile's static config, its fallback profiles, or the hard default."""
        job, agent_id, deadline = s.job, s.agent_id, s.deadline
        if self._left_s(deadline) <= 0:
            return None
        selection = select(
            self.settings.selection,
            [],
            agent_id=agent_id,
            request_model=job.model,
            job_type=job.type,
        )
        if selection is None or selection.base_url is None:
            return None
        kind: RuntimeKind = "ollama" if selection.provider == "ollama" else "openai"
        runtime = make_runtime(
            kind, selection.base_url, self._http, api_key=_env(selection.api_key_env)
        )
        s.route.profile = selection.profile
        target = Direct("static", runtime, selection.model, None, selection.fallback_reason)
        return await self._direct(s, target)

    async def _direct(self, s: Serving, target: Direct) -> JobResponse | None:
        return await serve_directly(target, s.job, self._left_s(s.deadline), s.route, s.on_delta)

    def _left_s(self, deadline: float) -> float:
        return deadline - self._clock()


def _describe(route: Route, selection: Selection) -> None:
    route.profile = selection.profile
    route.caps_age_s = selection.caps_age_s
    if selection.fallback_reason:
        route.fallback_reason = selection.fallback_reason


def _fail(job: JobRequest, code: ErrorCode, message: str) -> JobResponse:
    return JobResponse.failure(job.job_id, InferbusError(code, message))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


def _env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None
