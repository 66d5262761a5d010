"""One request's way through the router: targets in order, one attempt model.

    fleet nodes (selection, off open breakers and nodes already tried)
      → the router node's own runtime over HTTP (works without NATS), for the request's
        own model
      → the profile's static config (or, failing one, its fallback's or the hard default's)
      → fleet nodes serving its fallback profile, once its own static config failed, then
        the fallback profile's own static config
      → the router node's own runtime for what selection fell back to there: a fallback
        profile's model, the hard default
      → the hard default, when nothing before tried it
      → the cloud chain, when configured fallbacks name cloud models
    a profile naming a configured provider: its cloud chain only (router/cloud/targets.py)

Every target implements one protocol (router/attempts/targets.py `Target`): it is
attempted and ends as an `Outcome` carrying its calls' `Attempt` records; `next_action`
(router/attempts/decision.py) says whether to answer or go on. What an outcome says about
a target's health is written by the target to the health board (router/attempts/health.py).
When nothing answered, `final_failure` (router/attempts/unanswered.py) says what the
request gets. The dispatcher builds nothing: router/service.py wires its parts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from functools import partial

from router.attempts.decision import Outcome, next_action
from router.attempts.health import HealthBoard
from router.attempts.resume import StreamSoFar, continuing_job, may_resume, whole_answer
from router.attempts.route import Route
from router.attempts.runtime_target import RuntimeTarget, StaticRuntimes
from router.attempts.targets import Target
from router.attempts.unanswered import Unanswered, final_failure
from router.cloud.targets import CloudProviders
from router.config import OffloadSettings
from router.fleet.view import FleetView
from router.selection.needs import NO_NEEDS, JobNeeds, job_needs, what_is_missing
from router.selection.profiles import SelectionConfig
from router.selection.select import Selection, resolve_profile, select
from router.serving.call import Call, Served
from router.serving.node_target import NodeCalls
from services.capabilities import Capabilities
from services.errors import ErrorCode, InferbusError
from services.runtimes.base import Runtime
from services.tracing import Tracing
from services.wire import JobRequest, JobResponse, JobType, ModelSink, PieceSink

__all__ = ["LocalRuntime", "Router", "job_type_of"]


def job_type_of(job: JobRequest) -> JobType:
    return job.type or ("vision" if job.has_images() else "llm")


@dataclass(frozen=True, slots=True)
class LocalRuntime:
    """The router node's own runtime, and the node id it answers as."""

    runtime: Runtime
    node: str | None


@dataclass(frozen=True, slots=True)
class _LocalPick:
    """A model for the local runtime; `own` when it is the request's own (tried before
    the static config), else a fallback's (tried after it)."""

    model: str
    profile: str | None
    fallback_reason: str
    own: bool


@dataclass
class _Request:
    """One request on its way through the targets (what a target is `Asked`)."""

    job: JobRequest
    agent_id: str | None
    deadline: float  # on the router's clock
    on_piece: PieceSink | None
    on_model: ModelSink | None
    needs: JobNeeds = NO_NEEDS  # what the model and worker must be able to do
    route: Route = field(default_factory=Route)
    tried: set[str] = field(default_factory=set)
    skipped_open: bool = False  # a node that serves it was left out for its breaker
    retry_after_ms: list[int] = field(default_factory=list)
    conclusive: JobResponse | None = None  # a target's failure that says most
    trace: dict[str, str] = field(default_factory=dict)  # what the current attempt sends on
    broken: JobResponse | None = None  # a stream's error, if no node could resume it
    pick: Selection | None = None  # the line's fresh pick: the first node attempt's


class Router:
    """The dispatcher: one request through its targets, by its deadline."""

    def __init__(
        self,
        *,
        offload: OffloadSettings,
        selection: SelectionConfig,
        fleet: FleetView,
        health: HealthBoard,
        nodes: NodeCalls,
        cloud: CloudProviders,
        statics: StaticRuntimes,
        local: LocalRuntime | None = None,
        connected: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self.fleet = fleet
        self._tracing = tracing or Tracing(None, service="inferbus-router")
        self._health = health
        self._nodes = nodes
        self.cloud = cloud
        self.local = local
        self._offload = offload
        self._selection = selection
        self._statics = statics
        self._connected = connected
        self._clock = clock

    def reconfigure(
        self, selection: SelectionConfig, cloud: CloudProviders, statics: StaticRuntimes
    ) -> None:
        """Profiles, policies and the cloud of a reloaded config (router/reload.py); calls
        under way keep what they started with."""
        self._selection, self.cloud, self._statics = selection, cloud, statics

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
        so_far = call.so_far if call.on_piece is not None else None
        on_piece = so_far.relay(call.on_piece) if so_far and call.on_piece else call.on_piece
        first = job
        if so_far is not None and so_far.resumes:  # back from the line, still to resume
            job = continuing_job(first, so_far.text, so_far.resumes, so_far.pieces)
        needs = job_needs(job, job.type or "llm")
        request = _Request(job, call.agent_id, call.deadline, on_piece, call.on_model, needs)
        if job is first:  # the job the line picked for (not a resume's continuing job)
            request.pick = call.pick
        if so_far is not None:
            request.route.resumed = so_far.resumes
        if self._left_s(request) <= 0:
            error = InferbusError(ErrorCode.DEADLINE_EXCEEDED, "the budget was spent on arrival")
            return JobResponse.failure(job.job_id, error), request.route
        allowed = self._offload.resume_attempts if self._offload.resume and call.resume else 0
        async for target in self._targets(request):
            outcome = await self._attempt(target, request)
            request.route.attempts.extend(outcome.attempts)
            verdict = next_action(outcome)
            if verdict.action == "return" and so_far is not None and outcome.delivered:
                node_fault = verdict.health == "failure"
                if may_resume(so_far, node_fault=node_fault, allowed=allowed, job=first):
                    self._resume(request, first, so_far, outcome)
                    continue
            if verdict.action == "return":
                _served_by(request.route, target, outcome)
                if so_far is not None and so_far.resumes:
                    return _whole(outcome.response, so_far, request.route), request.route
                return outcome.response, request.route
            if outcome.conclusive:
                request.conclusive = outcome.response
            elif outcome.code == ErrorCode.BUSY and outcome.response.error is not None:
                request.retry_after_ms.append(outcome.response.error.retry_after_ms or 1000)
        if so_far is not None and so_far.resumes:
            return self._not_resumed(request, so_far), request.route
        return self._nothing_answered(request), request.route

    async def _attempt(self, target: Target, r: _Request) -> Outcome:
        """One target's attempt in a span of its own, whose context the target sends on
        (a cloud target sends none: the context stays inside the building)."""
        with self._tracing.span("attempt", kind="client") as span:
            r.trace = span.headers()
            outcome = await target.attempt(r)
            last = outcome.attempts[-1] if outcome.attempts else None
            span.set("inferbus.target", target.label)
            if last is not None:
                span.set("inferbus.via", last.via)
                span.set("inferbus.node", last.node or last.provider)
                span.set("inferbus.model", last.model)
                span.set("inferbus.outcome", last.outcome)
                span.set("inferbus.ms", last.ms)
                span.set("inferbus.calls", len(outcome.attempts))
            if outcome.code is not None:
                span.error(outcome.code)
            return outcome

    def _resume(self, r: _Request, job: JobRequest, so_far: StreamSoFar, broken: Outcome) -> None:
        """Go on on another node with the text so far as the assistant's prefill: the
        next targets are chosen for the continuing job (nodes that can continue)."""
        so_far.resumed()
        r.route.resumed = so_far.resumes
        if r.route.attempts:
            last = r.route.attempts[-1]
            r.route.attempts[-1] = last.model_copy(update={"resumed_after": broken.delivered})
        r.broken = broken.response
        r.job = continuing_job(
            job, so_far.text_before_resume, so_far.resumes, so_far.pieces_before_resume
        )
        r.needs = job_needs(r.job, r.job.type or "llm")
        r.route.fallback_reason = f"resumed after {broken.code.value if broken.code else 'loss'}"

    def _not_resumed(self, r: _Request, so_far: StreamSoFar) -> JobResponse:
        """A resumed stream no node took: BUSY while nodes that can continue it are busy
        (the line puts the call back at the head of its place, the text so far kept with
        it), else the error that broke it."""
        if r.retry_after_ms:
            error = InferbusError(
                ErrorCode.BUSY,
                f"every node that can continue the stream is busy ({so_far.pieces} pieces sent)",
                retry_after_ms=min(r.retry_after_ms),
            )
            return JobResponse.failure(r.job.job_id, error)
        if r.broken is not None:
            return r.broken
        return self._nothing_answered(r)

    async def _targets(self, r: _Request) -> AsyncIterator[Target]:
        """Fleet nodes while attempts and budget last, then local, then static, then the
        cloud chain; a cloud profile's request goes to its cloud chain only. A resumed
        stream goes on on fleet nodes only: their records say they can continue the
        model's text (`continue`); the others would answer another model's way, or not."""
        cloud, cloud_only = self.cloud.target_for(r.job, r.agent_id)
        if not cloud_only:
            async for target in self._building_targets(r):
                yield target
        if cloud is not None and self._left_s(r) > 0 and not r.route.resumed:
            yield cloud

    async def _building_targets(self, r: _Request) -> AsyncIterator[Target]:
        """What runs inside the building: fleet nodes, the local runtime serving the
        request's own model, the static config, fleet nodes serving its fallback profile,
        the local runtime serving a fallback, the hard default. A resumed stream: fleet
        nodes only."""
        async for target in self._fleet_targets(r):
            yield target
        if r.route.resumed:
            return
        local = self._local_pick(r)
        own_model = local is not None and local.own
        if local is not None and own_model:
            yield self._local_target(r, local)
        static = self._static_target(r)
        if static is not None:
            yield static
            async for target in self._fleet_targets(r, static_tried=True):
                yield target
            fallback_static = self._static_target(r, after=static)
            if fallback_static is not None:
                yield fallback_static
            if local is not None and not own_model:  # the same pick, its reason now true
                local = self._local_pick(r, static_tried=True)
        if local is not None and not own_model and self._left_s(r) > 0:
            yield self._local_target(r, local)
        hard_default = self._hard_default_target(r)
        if hard_default is not None:
            yield hard_default

    async def _fleet_targets(
        self, r: _Request, *, static_tried: bool = False
    ) -> AsyncIterator[Target]:
        """Fleet nodes in selection's order, off open breakers and nodes already tried;
        after a failed static config (`static_tried`), those serving the fallback profile."""
        breakers = self._health.breakers
        job_type = r.job.type or "llm"
        for _ in range(self._offload.attempts):
            if self._left_s(r) <= 0 or not self._connected():
                break
            now = self._clock()
            is_open = partial(breakers.is_open, job_type=job_type, now=now)
            selection, r.pick = r.pick, None
            if selection is None or r.tried or static_tried:
                selection = self._select(
                    r, exclude=frozenset(r.tried), excluded=is_open, static_tried=static_tried
                )
            if selection is None or selection.source != "fleet" or selection.node is None:
                r.route.fallback_reason = r.route.fallback_reason or (
                    selection.fallback_reason if selection else "no node serves it"
                )
                # Only here (no node left), and only in proportion to the troubled nodes:
                # did open breakers stand between the request and a node that serves it?
                if breakers.open_nodes(job_type, now):
                    again = self._select(r, exclude=frozenset(r.tried), static_tried=static_tried)
                    r.skipped_open = again is not None
                break
            node = selection.node
            r.tried.add(node)
            if not breakers.allows(node, job_type, now):
                r.skipped_open = True
                continue
            _describe(r.route, selection)
            yield self._nodes.target(node, selection.model, job_type, selection.type)

    def _select(
        self,
        r: _Request,
        *,
        exclude: frozenset[str] = frozenset(),
        excluded: Callable[[str], bool] | None = None,
        force_local: bool = False,
        static_tried: bool = False,
        fleet: bool = True,
        filtered: bool = True,
    ) -> Selection | None:
        """The one place selection is asked (fleet, local and static picks alike); with
        `fleet=False` it sees no candidates, so it answers with the profile's static pick.
        Candidates that cannot do what the job needs are left out unless `filtered=False`."""
        use_fleet = fleet and (self._connected() or force_local)
        return select(
            self._selection,
            self.fleet.index if use_fleet else [],
            agent_id=r.agent_id,
            request_model=r.job.model,
            exclude_nodes=exclude,
            excluded=excluded,
            force_local=force_local,
            static_tried=static_tried,
            job_type=r.job.type,
            now=self.fleet.clock(),
            needs=r.needs if filtered else NO_NEEDS,
        )

    def _local_pick(self, r: _Request, *, static_tried: bool = False) -> _LocalPick | None:
        """What the router node's own runtime would serve: the request's own model (its
        profile's, or the model it names), or what selection fell back to."""
        if self.local is None or self._left_s(r) <= 0:
            return None
        selection = self._select(r, force_local=True, static_tried=static_tried)
        if selection is None:
            return None if r.job.model is None else _LocalPick(r.job.model, None, "", own=True)
        wanted = resolve_profile(self._selection, agent_id=r.agent_id, request_model=r.job.model)
        own = selection.source != "hard_default" and selection.profile == wanted
        return _LocalPick(selection.model, selection.profile, selection.fallback_reason, own)

    def _local_target(self, r: _Request, pick: _LocalPick) -> RuntimeTarget:
        assert self.local is not None  # a pick exists only with a local runtime
        if pick.own:
            reason = (
                "remote attempts failed; local runtime"
                if r.route.attempts
                else "no remote node; local runtime"
            )
        else:  # after the static config: the route says what was used instead
            reason = f"{pick.fallback_reason}; local runtime"
            r.route.profile = pick.profile
            r.route.fallback_reason = reason
        return RuntimeTarget(
            "local", self.local.runtime, pick.model, self.local.node, reason, self._clock
        )

    def _static_target(
        self, r: _Request, *, after: RuntimeTarget | None = None
    ) -> RuntimeTarget | None:
        """The static config selection picks without the fleet; `after` the request's own
        failed, its fallback profile's when that is another one (the hard default comes
        later, after the local runtime: `_hard_default_target`)."""
        if self._left_s(r) <= 0:
            return None
        selection = self._select(r, fleet=False, static_tried=after is not None)
        if selection is None or selection.base_url is None:
            return None
        if after is not None and selection.source != "static":
            return None
        runtime = self._statics.get(selection.provider, selection.base_url, selection.api_key_env)
        if runtime is None:
            return None
        if after is not None and (runtime, selection.model) == (after.runtime, after.model):
            return None
        r.route.profile = selection.profile
        reason = selection.fallback_reason
        return RuntimeTarget("static", runtime, selection.model, None, reason, self._clock)

    def _hard_default_target(self, r: _Request) -> RuntimeTarget | None:
        """The hard default, last, when nothing before tried it: after a fallback profile's
        model that the local runtime turned out not to serve, say."""
        hard = self._selection.hard_default
        if hard is None or self._left_s(r) <= 0:
            return None
        if any(a.model == hard.model and a.via != "remote" for a in r.route.attempts):
            return None
        before = r.route.fallback_reason
        reason = f"{before}; using the hard default" if before else "using the hard default"
        target: RuntimeTarget | None = None
        if hard.base_url is not None:
            runtime = self._statics.get(hard.provider, str(hard.base_url), None)
            if runtime is not None:
                target = RuntimeTarget("static", runtime, hard.model, None, reason, self._clock)
        elif self.local is not None:
            local = self.local
            target = RuntimeTarget(
                "local", local.runtime, hard.model, local.node, reason, self._clock
            )
        if target is not None:
            r.route.profile, r.route.fallback_reason = None, reason
        return target

    def _nothing_answered(self, r: _Request) -> JobResponse:
        facts = Unanswered(
            job_id=r.job.job_id,
            wanted=r.job.model or r.job.type or "llm",
            outcomes=tuple(attempt.outcome for attempt in r.route.attempts),
            retry_after_ms=tuple(r.retry_after_ms),
            budget_left_s=self._left_s(r),
            connected=self._connected(),
            skipped_open=r.skipped_open,
            conclusive=r.conclusive,
        )
        if r.needs and facts.asks_what_is_lacking:
            facts = replace(facts, lacking=self._lacking(r))
        return final_failure(facts)

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

    def heard_from(self, record: Capabilities) -> None:
        """A node announcing every runtime healthy gets a trial past an open breaker."""
        runtimes = [runtime for runtime in record.runtimes if runtime.state != "disabled"]
        if runtimes and all(runtime.state == "healthy" for runtime in runtimes):
            self._health.breakers.heard_from(record.node_id, self._clock())

    def _left_s(self, r: _Request) -> float:
        return r.deadline - self._clock()


def _whole(response: JobResponse, so_far: StreamSoFar, route: Route) -> JobResponse:
    """A resumed stream's final answer, whole: what a duplicate of its key replays; the
    route says what each attempt cost (the answering one last, the broken ones before it,
    matched from the end: a pass back from the line holds only its own attempts)."""
    if response.result is None:
        return response
    result, usages = whole_answer(response.result, so_far)
    costly = [n for n, a in enumerate(route.attempts) if a.resumed_after is not None]
    if route.attempts:
        costly.append(len(route.attempts) - 1)
    for n, usage in zip(reversed(costly), reversed(usages), strict=False):
        route.attempts[n] = route.attempts[n].model_copy(update={"usage": usage})
    return response.model_copy(update={"result": result})


def _served_by(route: Route, target: Target, outcome: Outcome) -> None:
    """The route of an answer: where its last call went, and why the request came there."""
    last = outcome.attempts[-1] if outcome.attempts else None
    if last is not None:
        route.via, route.model, route.provider = last.via, last.model, last.provider
        route.node = last.node or outcome.response.node_id
    route.fallback_reason = route.fallback_reason or target.reason


def _describe(route: Route, selection: Selection) -> None:
    route.profile = selection.profile
    route.caps_age_s = selection.caps_age_s
    if selection.fallback_reason:
        route.fallback_reason = selection.fallback_reason
