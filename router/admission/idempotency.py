"""One runtime call per idempotency key, through the router: a gate before the dispatcher.

`IdempotencyGate.serve(call)` stands in front of `Router.dispatch(call)`
(router/serving/call.py has the call both take).

Only an explicit key (`Idempotency-Key` header or `idempotency_key` field) dedupes. A
client's `job_id` is its own label, not a key: two callers that both send `job_id: "1"`
are two jobs. So a job whose caller chose its `job_id` leaves the router with a fresh wire
job id (one the router generated is unique already and is kept), and with no explicit key
its wire key is that wire id; the caller always gets its own `job_id` back.

With a key, the key is scoped to the caller's tenant (the API key it authenticated with;
none configured → one shared scope) and hashed into the wire key, so two tenants' "42"
never meet and no API key travels on the bus. Then, per scoped key:
- an answer kept here (for `idempotency.ttl_s`) is replayed (`cached: true`) — to a
  stream as its tool calls whole, then its whole text (`services.wire.replay_pieces`);
- a request already in flight through this router is waited for, not sent again: all
  duplicates reach one node and one runtime call. Its answer is theirs when it would be
  kept (ok, or the request's own fault); a failure worth retrying is passed on as what it
  is, as the worker does; if the first caller went away before an answer, the next
  duplicate runs the job itself;
- anything else is served by `Router.dispatch`. With the shared JetStream store, first
  through the routers' space of it (`services.shared_claims`): this router claims the
  key with a lease it renews while it dispatches, then keeps the answer there, sealed
  (router/admission/sealing.py); a router that finds the key claimed waits for that
  answer while the lease lives and replays it, so duplicates across routers reach one
  node and one runtime call, and a key whose router died is run again after its lease.

A duplicate must mean the same job: the same type, input and params
(`JobRequest.fingerprint`, which ignores `stream`), and a model that resolves the same —
`model` omitted and named are the same job when the named one is what the omitted one
resolves to now. Anything else is IDEMPOTENCY_MISMATCH (422).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from router.attempts.route import Route
from router.fleet.view import FleetView
from router.selection.profiles import SelectionConfig
from router.selection.select import select
from router.serving.call import Call, Served
from router.serving.dispatch import job_type_of
from services.errors import ErrorCode, InferbusError
from services.keystore import Record
from services.shared_claims import Ran, Refused, SharedClaims
from services.wire import JobRequest, JobResponse, is_replayable, new_job_id, replay_pieces

log = logging.getLogger("inferbus.router")

# What the gate stands in front of: the dispatcher (`Router.dispatch`).
Dispatch = Callable[[Call], Awaitable[Served]]
ResolveModel = Callable[[JobRequest, str | None], str | None]


def scoped_key(tenant: str, key: str) -> str:
    """The wire key: tenant and key hashed together (fits the 200-char id limit)."""
    digest = hashlib.blake2b(f"{tenant}\0{key}".encode(), digest_size=16).hexdigest()
    return f"r{digest}"


@dataclass(frozen=True)
class KeyedJob:
    """What a key was first used for: compared against every duplicate."""

    fingerprint: str
    models: frozenset[str]  # the model as named, as resolved, and as it answered
    resolved: str | None = None  # what the shared store records as its model

    def same_job(self, fingerprint: str, models: frozenset[str]) -> bool:
        if fingerprint != self.fingerprint:
            return False
        return not models or not self.models or bool(models & self.models)


@dataclass(frozen=True)
class Kept:
    job: KeyedJob
    response: JobResponse
    route: Route


@dataclass
class InFlight:
    job: KeyedJob
    outcome: asyncio.Future[Served | None]  # None: the first caller left before an answer


class KeptAnswers:
    """Answers by scoped key for `ttl_s`, at most `max_entries` (oldest out first)."""

    def __init__(self, *, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Kept]] = OrderedDict()

    def get(self, key: str) -> Kept | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires_at, kept = found
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        return kept

    def put(self, key: str, kept: Kept) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self._ttl_s, kept)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class IdempotencyGate:
    def __init__(
        self,
        dispatch: Dispatch,
        *,
        resolve_model: ResolveModel,
        answers: KeptAnswers,
        shared: SharedClaims | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` is the one the calls' deadlines are on (the dispatcher's)."""
        self._dispatch = dispatch
        self._resolve_model = resolve_model
        self._answers = answers
        self._shared = shared
        self._clock = clock
        self._in_flight: dict[str, InFlight] = {}

    async def serve(self, call: Call) -> Served:
        """The dispatcher, with duplicates of an explicit key served once (module doc)."""
        job = call.job
        # A job id the router generated (the caller sent none) is unique already, and
        # keeping it lets the caller's answer be found in the workers' logs.
        wire_id = new_job_id() if "job_id" in job.model_fields_set else job.job_id
        job_type = job_type_of(job)
        if job.idempotency_key is None:
            update = {"job_id": wire_id, "idempotency_key": wire_id, "type": job_type}
            response, route = await self._dispatch(call.with_job(job.model_copy(update=update)))
            return _for_caller(response, job.job_id), route
        key = scoped_key(call.tenant, job.idempotency_key)
        wire = job.model_copy(update={"job_id": wire_id, "idempotency_key": key, "type": job_type})
        keyed = self._keyed(wire, call.agent_id)
        while True:
            kept = self._answers.get(key)
            if kept is not None:
                if not kept.job.same_job(keyed.fingerprint, keyed.models):
                    return _mismatch(job), Route()
                return await _replay(kept, call), _replayed_route(kept.route)
            in_flight = self._in_flight.get(key)
            if in_flight is None:
                # What the gate spent (the shared store, waiting on a first caller that
                # left) is the caller's budget too: the call's deadline stands.
                return await self._serve_first(key, keyed, call, wire)
            if not in_flight.job.same_job(keyed.fingerprint, keyed.models):
                return _mismatch(job), Route()
            try:
                async with asyncio.timeout(max(call.left_s(self._clock()), 0.0)):
                    first = await asyncio.shield(in_flight.outcome)
            except TimeoutError:
                error = InferbusError(
                    ErrorCode.DEADLINE_EXCEEDED, "budget spent waiting for the same key"
                )
                return JobResponse.failure(job.job_id, error), Route()
            if first is None:
                continue  # the first caller left: this one runs it
            response, route = first
            if is_replayable(response):
                replay = Kept(in_flight.job, response, route)
                return await _replay(replay, call), _replayed_route(route)
            return _for_caller(response, job.job_id), route

    async def _serve_first(self, key: str, keyed: KeyedJob, call: Call, wire: JobRequest) -> Served:
        in_flight = InFlight(keyed, asyncio.get_running_loop().create_future())
        self._in_flight[key] = in_flight
        served: Served | None = None
        try:
            if self._shared is None:
                served = await self._dispatch(call.with_job(wire))
            else:
                served = await self._serve_shared(key, keyed, call, wire)
        finally:
            if served is not None and is_replayable(served[0]):
                answered = served[0].model
                models = keyed.models | ({answered} if answered else set())
                self._answers.put(key, Kept(KeyedJob(keyed.fingerprint, models), *served))
            del self._in_flight[key]
            in_flight.outcome.set_result(served)
        response, route = served
        return _for_caller(response, call.job.job_id), route

    async def _serve_shared(
        self, key: str, keyed: KeyedJob, call: Call, wire: JobRequest
    ) -> Served:
        """Through the routers' space of the shared store: this router claims the key and
        dispatches, or replays the answer another router keeps (after waiting for it
        while that router's lease lives)."""
        assert self._shared is not None

        def same_job(found: Record) -> bool:
            answered = found.response.model if found.response is not None else None
            models = frozenset(name for name in (found.model, answered) if name)
            return KeyedJob(found.job, models).same_job(keyed.fingerprint, keyed.models)

        outcome = await self._shared.run_once(
            key,
            Record(state="running", job=keyed.fingerprint, model=keyed.resolved),
            same_job,
            call.deadline,
            lambda: self._dispatch(call.with_job(wire)),
            lambda served: served[0],
        )
        if isinstance(outcome, Ran):
            return outcome.value
        answer = outcome.answer
        if isinstance(outcome, Refused):
            if answer.error is not None and answer.error.code == ErrorCode.IDEMPOTENCY_MISMATCH:
                return _mismatch(call.job), Route()
            return answer, Route()
        route = Route(via="remote", node=answer.node_id, model=answer.model)
        replayed = Kept(keyed, answer, route)
        return await _replay(replayed, call.with_job(wire)), _replayed_route(route)

    @property
    def shared(self) -> SharedClaims | None:
        return self._shared

    def share(self, shared: SharedClaims) -> None:
        """From now on, keys are also claimed in (and answers kept in) the shared store."""
        self._shared = shared

    def _keyed(self, wire: JobRequest, agent_id: str | None) -> KeyedJob:
        """What a key is used for; `wire` carries the job's type already."""
        resolved = self._resolve_model(wire, agent_id)
        models = frozenset(name for name in (wire.model, resolved) if name)
        return KeyedJob(wire.fingerprint(), models, resolved or wire.model)


def fleet_model(selection: Callable[[], SelectionConfig], fleet: FleetView) -> ResolveModel:
    """What a job's `model` (named or omitted) resolves to on the fleet now, with the
    profiles running now (`selection` gives them: a reload swaps them)."""

    def resolve(job: JobRequest, agent_id: str | None) -> str | None:
        chosen = select(
            selection(),
            fleet.index,
            agent_id=agent_id,
            request_model=job.model,
            job_type=job.type,
            now=fleet.clock(),
        )
        return chosen.model if chosen is not None else None

    return resolve


async def _replay(kept: Kept, call: Call) -> JobResponse:
    """A kept answer for a duplicate; to a stream as `replay_pieces` sends it (its tool
    calls whole, then its whole text)."""
    response = kept.response
    if call.on_model is not None and response.model:
        call.on_model(response.model)
    if call.on_piece is not None and response.result is not None:
        for piece in replay_pieces(response.result):
            await call.on_piece(piece)
    done = True if call.job.stream else None
    return response.model_copy(update={"job_id": call.job.job_id, "cached": True, "done": done})


def _replayed_route(route: Route) -> Route:
    """Where the kept answer came from, without its attempts: a replay made none (and
    the attempt metrics must not count the first request's attempts again)."""
    return route.model_copy(update={"attempts": []})


def _for_caller(response: JobResponse, job_id: str) -> JobResponse:
    """The answer under the caller's own job id (the wire may have carried a fresh one)."""
    if response.job_id == job_id:
        return response
    return response.model_copy(update={"job_id": job_id})


def _mismatch(job: JobRequest) -> JobResponse:
    error = InferbusError(
        ErrorCode.IDEMPOTENCY_MISMATCH,
        f"idempotency key {job.idempotency_key!r} was used for a different job",
    )
    return JobResponse.failure(job.job_id, error)
