"""One request's way through the router: targets in order, one attempt model.

    fleet nodes (selection, off open breakers and nodes already tried)
      → the router node's own runtime over HTTP (works without NATS)
      → the profile's static config or the hard default
      → the cloud chain, when configured fallbacks name cloud models
    a profile naming a configured provider: its cloud chain only (router/cloud/targets.py)

Every target is attempted the same way (`NodeLink.attempt` / `attempt_runtime`) and ends
as an `Outcome`; `next_action` (router/attempts/decision.py) says whether to answer or go on and
what the outcome says about the target's health, which the health board (router/attempts/board.py)
keeps. When nothing answered: all BUSY → BUSY with the smallest Retry-After heard;
nothing serves the model → MODEL_NOT_FOUND; else NO_ROUTE.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from functools import partial

import httpx
from nats.aio.client import Client as NatsClient

from router.attempts.board import BreakerBoard, breaker_kind
from router.attempts.decision import Outcome, next_action
from router.attempts.route import Attempt, Route, Via
from router.attempts.targets import (
    CloudChainTarget,
    NodeTarget,
    RuntimeTarget,
    Target,
    attempt_runtime,
)
from router.cloud.targets import CloudProviders
from router.config import RouterSettings
from router.fleet.view import FleetView
from router.selection.needs import NO_NEEDS, JobNeeds, job_needs, what_is_missing
from router.selection.select import Selection, select
from router.serving.call import Call, Served
from router.serving.liveness import Liveness, LivenessSettings
from router.serving.node_link import NodeLink, Waits
from services.capabilities import Capabilities
from services.errors import ErrorCode, InferbusError
from services.runtimes import make_runtime
from services.runtimes.base import Runtime, RuntimeKind
from services.subjects import Subjects
from services.wire import JobRequest, JobResponse, JobType, ModelSink, PieceSink


def job_type_of(job: JobRequest) -> JobType:
    return job.type or ("vision" if job.has_images() else "llm")


@dataclass
class _Request:
    """One request on its way through the targets."""

    job: JobRequest
    agent_id: str | None
    deadline: float  # on the router's clock
    on_delta: PieceSink | None
    on_model: ModelSink | None
    needs: JobNeeds = NO_NEEDS  # what the model and worker must be able to do
    route: Route = field(default_factory=Route)
    tried: set[str] = field(default_factory=set)
    skipped_open: bool = False  # a node that serves it was left out for its breaker
    retry_after_ms: list[int] = field(default_factory=list)
    cloud_answer: JobResponse | None = None  # the cloud chain's failure, when it ran


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
        self.board = BreakerBoard(settings.breakers)
        # Cooldowns per (provider, key) and model health live beside the breakers.
        self.cloud = CloudProviders(
            settings.providers,
            selection=settings.selection,
            fallbacks=tuple(settings.fallbacks),
            failover=settings.failover,
            http=http,
            environ=os.environ,
            clock=clock,
        )
        fleet.on_record(self._heard_from)
        fleet.on_forget(self.board.forget)
        subjects = Subjects(settings.subject_prefix)
        self.link = NodeLink(nc, subjects)
        offload = settings.offload
        self.liveness = Liveness(
            self.link,
            self.link.node_lost,
            LivenessSettings(
                offload.liveness_interval_ms / 1000.0,
                offload.liveness_timeout_ms / 1000.0,
                offload.liveness_misses,
            ),
        )
        self._http = http
        self._clock = clock
        self._remote_slots = asyncio.Semaphore(offload.remote_concurrency)
        self._bus_settled_at = -float("inf")  # when the router's connection last came back
        local = settings.local_runtime
        self.local_runtime: Runtime | None = (
            make_runtime(local.kind, local.url, http, api_key=_env(local.api_key_env))
            if local is not None
            else None
        )

    def reconnected(self) -> None:
        """The router's own NATS connection is back: no responders mean little for a while."""
        self._bus_settled_at = self._clock()

    async def dispatch(self, call: Call) -> Served:
        """Serve one call; always returns one answer, by its deadline.

        With `call.on_piece`, the answer is streamed: each piece goes to it as it is
        produced, and the returned answer ends the stream; `call.on_model` hears the
        model of each target before its first piece. Until the first piece, a failing
        target is left for the next one; after it, the stream ends with the error instead.
        """
        job = call.job
        if job.idempotency_key is None or job.type is None:  # the gate sets both
            job = job.model_copy(update={"idempotency_key": job.key, "type": job_type_of(job)})
        needs = job_needs(job, job.type or "llm")
        request = _Request(job, call.agent_id, call.deadline, call.on_piece, call.on_model, needs)
        if self._left_s(request) <= 0:
            spent = _fail(job, ErrorCode.DEADLINE_EXCEEDED, "the budget was spent on arrival")
            return spent, request.route
        async for target in self._targets(request):
            outcome = await self._attempt(target, request)
            if next_action(outcome).action == "return":
                self._served_by(request.route, target)
                return outcome.response, request.route
            if isinstance(target, CloudChainTarget):
                request.cloud_answer = outcome.response
                continue
            if outcome.code == ErrorCode.BUSY and outcome.response.error is not None:
                request.retry_after_ms.append(outcome.response.error.retry_after_ms or 1000)
        return self._nothing_answered(request), request.route

    async def _targets(self, r: _Request) -> AsyncIterator[Target]:
        """Fleet nodes while attempts and budget last, then local, then static, then the
        cloud chain; a cloud profile's request goes to its cloud chain only."""
        cloud, cloud_only = self.cloud.target_for(r.job, r.agent_id)
        if not cloud_only:
            async for target in self._building_targets(r):
                yield target
        if cloud is not None and self._left_s(r) > 0:
            yield cloud

    async def _building_targets(self, r: _Request) -> AsyncIterator[Target]:
        """What runs inside the building: fleet nodes, the local runtime, static."""
        kind = breaker_kind(r.job.type or "llm")
        for _ in range(self.settings.offload.attempts):
            if self._left_s(r) <= 0 or not self.nc.is_connected:
                break
            now = self._clock()
            is_open = partial(self.board.is_open, job_type=kind, now=now)
            selection = self._select(r, exclude=frozenset(r.tried), excluded=is_open)
            if selection is None or selection.source != "fleet" or selection.node is None:
                r.route.fallback_reason = r.route.fallback_reason or (
                    selection.fallback_reason if selection else "no node serves it"
                )
                # Only here (no node left), and only in proportion to the troubled nodes:
                # did open breakers stand between the request and a node that serves it?
                if self.board.open_nodes(kind, now):
                    r.skipped_open = self._select(r, exclude=frozenset(r.tried)) is not None
                break
            node = selection.node
            r.tried.add(node)
            if not self.board.allows(node, kind, now):
                r.skipped_open = True
                continue
            _describe(r.route, selection)
            yield NodeTarget(node, selection.model, r.job.type or "llm", selection.type)
        local = self._local_target(r)
        if local is not None:
            yield local
        static = self._static_target(r)
        if static is not None:
            yield static

    def _select(
        self,
        r: _Request,
        *,
        exclude: frozenset[str] = frozenset(),
        excluded: Callable[[str], bool] | None = None,
        force_local: bool = False,
        fleet: bool = True,
        filtered: bool = True,
    ) -> Selection | None:
        """The one place selection is asked (fleet, local and static picks alike); with
        `fleet=False` it sees no candidates, so it answers with the profile's static pick.
        Candidates that cannot do what the job needs are left out unless `filtered=False`."""
        use_fleet = fleet and (self.nc.is_connected or force_local)
        return select(
            self.settings.selection,
            self.fleet.index if use_fleet else [],
            agent_id=r.agent_id,
            request_model=r.job.model,
            exclude_nodes=exclude,
            excluded=excluded,
            force_local=force_local,
            job_type=r.job.type,
            now=self.fleet.clock(),
            needs=r.needs if filtered else NO_NEEDS,
        )

    def _local_target(self, r: _Request) -> RuntimeTarget | None:
        runtime = self.local_runtime
        if runtime is None or self._left_s(r) <= 0:
            return None
        selection = self._select(r, force_local=True)
        model = selection.model if selection is not None else r.job.model
        if model is None:
            return None
        reason = (
            "remote attempts failed; local runtime"
            if r.route.attempts
            else "no remote node; local runtime"
        )
        return RuntimeTarget("local", runtime, model, self.settings.local_node, reason)

    def _static_target(self, r: _Request) -> RuntimeTarget | None:
        if self._left_s(r) <= 0:
            return None
        selection = self._select(r, fleet=False)
        if selection is None or selection.base_url is None:
            return None
        kind: RuntimeKind = "ollama" if selection.provider == "ollama" else "openai"
        runtime = make_runtime(
            kind, selection.base_url, self._http, api_key=_env(selection.api_key_env)
        )
        r.route.profile = selection.profile
        return RuntimeTarget("static", runtime, selection.model, None, selection.fallback_reason)

    async def _attempt(self, target: Target, r: _Request) -> Outcome:
        if isinstance(target, CloudChainTarget):  # each model of the chain says its name
            outcome, calls = await self.cloud.attempt(
                target, r.job, r.deadline, r.on_delta, r.on_model
            )
            r.route.attempts.extend(calls)
            return outcome
        if r.on_model is not None:
            r.on_model(target.model)
        if isinstance(target, RuntimeTarget):
            outcome = await attempt_runtime(target, r.job, self._left_s(r), r.on_delta)
            self._note(r.route, target.via, None, target.model, outcome)
            return outcome
        try:
            outcome = await self._attempt_node(target, r)
        except asyncio.CancelledError:  # the caller went away: neutral, and a trial ends
            self.board.record(target.node, breaker_kind(target.job_type), "neutral", self._clock())
            raise
        health = next_action(outcome).health
        self.board.record(target.node, breaker_kind(target.job_type), health, self._clock())
        self._note(r.route, "remote", target.node, target.model, outcome)
        return outcome

    async def _attempt_node(self, target: NodeTarget, r: _Request) -> Outcome:
        left_s = self._left_s(r)
        offload = self.settings.offload
        cap_s = offload.attempt_timeout_ms / 1000.0
        try:
            async with asyncio.timeout(left_s):
                await self._remote_slots.acquire()
        except TimeoutError:
            error = InferbusError(ErrorCode.DEADLINE_EXCEEDED, "no free remote slot in time")
            return Outcome(JobResponse.failure(r.job.job_id, error), "timed_out", budget_bound=True)
        self.liveness.hold(target.node)
        try:
            with self.fleet.job_on(target.node, target.slot_type):
                left_s = self._left_s(r)
                waits = Waits(
                    total_s=min(left_s, cap_s),
                    budget_bound=left_s <= cap_s,
                    first_token_s=offload.first_token_timeout_ms / 1000.0,
                    idle_s=offload.idle_timeout_ms / 1000.0,
                )
                job = r.job.model_copy(update={"model": target.model})
                outcome = await self.link.attempt(
                    target.node, target.job_type, job, waits, r.on_delta
                )
        finally:
            self.liveness.release(target.node)
            self._remote_slots.release()
        if outcome.ending in ("no_responders", "lost") and self._bus_settling(target.node):
            outcome = replace(outcome, bus_settling=True)
        return outcome

    def _bus_settling(self, node: str) -> bool:
        """The router's connection is down, or came back less than a heartbeat ago."""
        if not self.nc.is_connected:
            return True
        view = self.fleet.nodes.get(node)
        heartbeat_s = view.record.ttl_s / 3 if view is not None else 10.0
        return self._clock() - self._bus_settled_at < heartbeat_s

    def _note(self, route: Route, via: Via, node: str | None, model: str, outcome: Outcome) -> None:
        route.attempts.append(
            Attempt(
                via=via,
                node=node,
                model=model,
                outcome=outcome.code or "ok",
                ms=outcome.elapsed_ms,
            )
        )

    def _served_by(self, route: Route, target: Target) -> None:
        if isinstance(target, CloudChainTarget):
            last = route.attempts[-1] if route.attempts else None
            route.via = "cloud"
            if last is not None:
                route.provider, route.model = last.provider, last.model
            route.fallback_reason = route.fallback_reason or target.reason
            return
        if isinstance(target, NodeTarget):
            route.via, route.node, route.model = "remote", target.node, target.model
            return
        route.via, route.model = target.via, target.model
        attempt = route.attempts[-1] if route.attempts else None
        if attempt is not None and attempt.outcome == "ok":
            route.node = target.node
            route.fallback_reason = route.fallback_reason or target.reason

    def _nothing_answered(self, r: _Request) -> JobResponse:
        job, route = r.job, r.route
        if r.cloud_answer is not None:  # the cloud came last: its answer says most
            return r.cloud_answer
        if self._left_s(r) <= 0:
            return _fail(job, ErrorCode.DEADLINE_EXCEEDED, "the budget ran out before an answer")
        outcomes = [attempt.outcome for attempt in route.attempts]
        if outcomes and all(outcome == ErrorCode.BUSY for outcome in outcomes):
            retry = min(r.retry_after_ms)
            error = InferbusError(
                ErrorCode.BUSY, f"every node that serves it is busy ({len(outcomes)} tried)",
                retry_after_ms=retry,
            )  # fmt: skip
            return JobResponse.failure(job.job_id, error)
        wanted = job.model or job.type
        nowhere = not outcomes and not r.skipped_open and self.nc.is_connected
        lacking = self._lacking(r) if nowhere and r.needs else None
        if lacking is not None:
            return JobResponse.failure(job.job_id, lacking)
        if nowhere or (outcomes and all(o == ErrorCode.MODEL_NOT_FOUND for o in outcomes)):
            return _fail(job, ErrorCode.MODEL_NOT_FOUND, f"nothing serves {wanted}")
        last = outcomes[-1] if outcomes else None
        reason = f"nothing could serve it (last attempt: {last})" if last else "nothing serves it"
        if not self.nc.is_connected and not outcomes:
            reason = "the router is not connected to NATS and nothing else serves it"
        return _fail(job, ErrorCode.NO_ROUTE, f"{wanted} — {reason}")

    def _lacking(self, r: _Request) -> InferbusError | None:
        """When only what the job needs kept it from the fleet: the error naming it.

        Asked only when nothing was attempted. A named model that exists but cannot do
        what is asked is the request's problem (BAD_REQUEST naming the field, as OpenAI
        clients expect); no capable model of any name, or only workers too old to
        understand a field, is the fleet's (NO_ROUTE, retryable)."""
        unfiltered = self._select(r, filtered=False)
        if unfiltered is None or unfiltered.source != "fleet" or unfiltered.node is None:
            return self._not_an_embedder(r)
        group = self.fleet.index.group(unfiltered.model, unfiltered.type)
        why = (
            what_is_missing(self.fleet.index, group, unfiltered.node, r.needs)
            if group is not None
            else None
        )
        if why is None:
            return None
        if r.job.model and why.by_model:
            return InferbusError(ErrorCode.BAD_REQUEST, f"{why} (on any node that serves it)")
        wanted = r.job.model or r.job.type
        return InferbusError(ErrorCode.NO_ROUTE, f"{wanted} — no capable node: {why}")

    def _not_an_embedder(self, r: _Request) -> InferbusError | None:
        """An embed job naming a model the fleet serves only for chat (or vision)."""
        model = r.job.model
        served = self.fleet.index.type_of(model) if model and r.job.type == "embed" else None
        if served is None or served == "embed":
            return None
        reason = f"input: model {model!r} does not support embedding (it is served as {served})"
        return InferbusError(ErrorCode.BAD_REQUEST, reason)

    def _heard_from(self, record: Capabilities) -> None:
        """A node announcing every runtime healthy gets a trial past an open breaker."""
        runtimes = [runtime for runtime in record.runtimes if runtime.state != "disabled"]
        if runtimes and all(runtime.state == "healthy" for runtime in runtimes):
            self.board.heard_from(record.node_id, self._clock())

    def _left_s(self, r: _Request) -> float:
        return r.deadline - self._clock()

    async def stop(self) -> None:
        await self.liveness.stop()
        await self.link.stop()


def _describe(route: Route, selection: Selection) -> None:
    route.profile = selection.profile
    route.caps_age_s = selection.caps_age_s
    if selection.fallback_reason:
        route.fallback_reason = selection.fallback_reason


def _fail(job: JobRequest, code: ErrorCode, message: str) -> JobResponse:
    return JobResponse.failure(job.job_id, InferbusError(code, message))


def _env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None
