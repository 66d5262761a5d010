"""The cloud chain as a target: keys, one adapter per (provider, key), the chain run.

    CloudProviders.target_for(job) ─► CloudChainTarget(chain).attempt(asked)
        run_cloud_chain(chain, keys_of, board, call): failover across keys and models
        call = one (provider, key, model): whole → the adapter's chat; stream → open it
               and return once its first piece arrived, so that failing over happens
               before the first token and never after it
    ─► one Outcome for the router's decision (router/attempts/decision.py), with one
       `Attempt` per call for the answer's `route`

Built once at start: keys read from the environment given (a named variable that is unset
is a start-up error naming the variable), one adapter per (provider, key id), and the
usage ledger `/providers` shows; cooldowns and model health are the cloud half of the
health board (router/cloud/cooldowns.py), passed in. Every error message that leaves here
has the keys removed.

Where clouds sit: a request whose profile names a configured provider goes to its
provider chain only; any other request reaches the cloud only through configured
fallbacks, after the fleet, the local runtime and the static profile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from router.attempts.decision import Outcome
from router.attempts.route import elapsed_ms
from router.attempts.targets import Asked, answer_of, call_of, stream_pieces
from router.cloud.chain import run_cloud_chain
from router.cloud.chains import CloudTarget, build_chain, resolve_cloud_chain
from router.cloud.cooldowns import CloudHealthBoard
from router.cloud.providers import CloudModel, ProviderConfig, resolve_keys
from router.cloud.usage import UsageLedger, render_providers
from router.selection.profiles import LlmProfile, SelectionConfig
from router.selection.select import resolve_profile
from services.errors import ErrorCode, InferbusError, Reason
from services.runtimes import make_runtime
from services.runtimes.base import ChatReply, Runtime
from services.runtimes.calls import chat_within
from services.runtimes.errors import redact
from services.wire import JobRequest, JobResponse, ModelSink, Piece, PieceSink

__all__ = ["CloudChainTarget", "CloudProviders"]


@dataclass(frozen=True, slots=True)
class CloudChainTarget:
    """The request's cloud chain: each (provider, key, model) in it is tried in turn, and
    failing over between them is the chain's own table (router/cloud/actions.py)."""

    chain: tuple[CloudModel, ...]
    reason: str  # why the request came here (fallback_reason)
    providers: CloudProviders

    @property
    def label(self) -> str:
        return "cloud"

    async def attempt(self, asked: Asked) -> Outcome:
        return await self.providers.attempt(self.chain, asked)


@dataclass(slots=True)
class _Opened:
    """One call that succeeded: the whole reply, or a stream past its first piece."""

    target: CloudTarget
    runtime: Runtime
    reply: ChatReply | None = None
    rest: asyncio.Task[ChatReply] | None = None  # the stream after its first piece


class CloudProviders:
    """Every configured provider's keys, adapters, health board and usage counters."""

    def __init__(
        self,
        providers: Mapping[str, ProviderConfig],
        *,
        selection: SelectionConfig,
        fallbacks: tuple[str, ...],
        board: CloudHealthBoard,
        http: httpx.AsyncClient,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.providers = dict(providers)
        self._fallbacks = fallbacks
        self._selection = selection
        keys = {name: resolve_keys(name, cfg, environ) for name, cfg in self.providers.items()}
        self.keys_of = {name: tuple(key.key_id for key in found) for name, found in keys.items()}
        self._secrets = tuple(key.secret for found in keys.values() for key in found if key.secret)
        self._runtimes: dict[tuple[str, str], Runtime] = {
            (name, key.key_id): make_runtime(
                self.providers[name].kind,
                self.providers[name].base_url,
                http,
                api_key=key.secret or None,
            )
            for name, found in keys.items()
            for key in found
        }
        self.board = board
        self._first_answer_s = board.settings.first_answer_timeout_s
        self.ledger = UsageLedger()
        self._clock = clock

    def is_cloud_profile(self, profile: LlmProfile | None) -> bool:
        """A profile naming a configured provider: its requests go to the provider chain."""
        return profile is not None and profile.provider in self.providers

    def target_for(
        self, job: JobRequest, agent_id: str | None
    ) -> tuple[CloudChainTarget | None, bool]:
        """The request's cloud target (None: nothing in its chain is a cloud's), and
        whether it is the only target (a cloud profile's request skips the building).

        Only chat (`llm`) jobs go to a cloud. Without `providers:` this costs nothing.
        """
        if not self.providers or (job.type or "llm") != "llm":
            return None, False
        name = resolve_profile(self._selection, agent_id=agent_id, request_model=job.model)
        profile = self._selection.llm_profiles.get(name) if name is not None else None
        cloud_only = self.is_cloud_profile(profile)
        chain = self.chain_for(job, profile)
        why = "a cloud profile" if cloud_only else "configured cloud fallbacks"
        return (CloudChainTarget(chain, why, self) if chain else None), cloud_only

    def chain_for(self, job: JobRequest, profile: LlmProfile | None) -> tuple[CloudModel, ...]:
        """The request's cloud chain: the entries of its model chain a provider claims.

        Chain = the request's model (a cloud profile's `provider/model`), the request's
        fallbacks, the profile's, the global ones; entries no provider claims are fleet
        models and are not part of it.
        """
        if not self.providers:
            return ()
        if profile is not None and self.is_cloud_profile(profile):
            first: str | None = f"{profile.provider}/{profile.model}"
        else:
            first = job.model or (profile.model if profile is not None else None)
        names = build_chain(
            first,
            job.fallback_models or (),
            profile.fallbacks if profile is not None else (),
            self._fallbacks,
        )
        return resolve_cloud_chain(names, self.providers)

    def view(self) -> dict[str, Any]:
        """The `/providers` document (key ids, never keys)."""
        return render_providers(self.providers, self.board, self.ledger, self._clock())

    async def attempt(self, chain: tuple[CloudModel, ...], asked: Asked) -> Outcome:
        """Walk the chain within the request's deadline (on this object's clock): one
        outcome, conclusive when it fails (nothing after the cloud says more), carrying
        each call as the route lists it."""
        started = time.perf_counter()
        job, on_piece = asked.job, asked.on_piece
        result = await run_cloud_chain(
            chain,
            self.keys_of,
            self.board,
            self._counted(job, on_piece, asked.on_model),
            deadline=asked.deadline,
            max_tokens_sent=job.params.max_tokens is not None,
            clock=self._clock,
        )
        calls = tuple(result.attempts)
        done = True if on_piece is not None else None
        opened = result.reply
        if opened is None:
            error = result.error or InferbusError(ErrorCode.NO_ROUTE, "no cloud target answered")
            failure = JobResponse.failure(job.job_id, self._scrubbed(error), done=done)
            took = elapsed_ms(started)
            return Outcome(failure, elapsed_ms=took, attempts=calls, conclusive=True)
        model = opened.target.model.model
        reply = opened.reply
        if opened.rest is not None:
            try:
                reply = await opened.rest
            except InferbusError as error:  # after the first piece: the stream ends with it
                clean = self._failed(opened.target, error)
                failure = JobResponse.failure(
                    job.job_id, clean, model=model, runtime=opened.runtime.kind, done=True
                )
                took = elapsed_ms(started)
                return Outcome(failure, delivered=1, elapsed_ms=took, attempts=calls)
            self._succeeded(opened.target, reply)
        assert reply is not None
        took = elapsed_ms(started)
        answer = answer_of(
            job, reply, model=model, runtime=opened.runtime.kind, node=None, elapsed_ms=took,
            done=done,
        )  # fmt: skip
        delivered = 1 if opened.rest is not None else 0
        return Outcome(answer, delivered=delivered, elapsed_ms=took, attempts=calls)

    def _counted(
        self, job: JobRequest, on_piece: PieceSink | None, on_model: ModelSink | None
    ) -> Callable[[CloudTarget, bool, float], Awaitable[_Opened]]:
        """The chain's call for one target, with the ledger kept and keys scrubbed."""

        async def call(target: CloudTarget, drop_max_tokens: bool, left_s: float) -> _Opened:
            runtime = self._runtimes[target.provider, target.key_id]
            first_s = min(left_s, self._first_answer_s)
            try:
                if on_piece is None:
                    reply = await chat_within(
                        runtime,
                        call_of(job, target.model.model, drop_max_tokens=drop_max_tokens),
                        first_s,
                    )
                    self._succeeded(target, reply)
                    return _Opened(target, runtime, reply=reply)
                opened = await _open_stream(
                    target, runtime, job, drop_max_tokens, (first_s, left_s), on_piece, on_model
                )
            except InferbusError as error:
                if error.code == ErrorCode.DEADLINE_EXCEEDED and first_s < left_s:
                    # Its own limit, not the caller's budget: a slow key, try the next.
                    error = InferbusError(
                        ErrorCode.BACKEND_UNAVAILABLE,
                        f"no answer within failover.first_answer_timeout_s ({first_s:g} s)",
                        reason=Reason.TRANSIENT,
                    )
                raise self._failed(target, error) from None
            if opened.reply is not None:  # a stream that ended before any piece
                self._succeeded(target, opened.reply)
            return opened

        return call

    def _succeeded(self, target: CloudTarget, reply: ChatReply) -> None:
        model = target.model.model
        price = self.providers[target.provider].price_of(model)
        usage = reply.usage
        cost = price.cost(usage.prompt_tokens, usage.completion_tokens) if price else None
        self.ledger.record_success(target.provider, target.key_id, model, usage, cost)

    def _failed(self, target: CloudTarget, error: InferbusError) -> InferbusError:
        clean = self._scrubbed(error)
        self.ledger.record_failure(
            target.provider, target.key_id, target.model.model, clean, self._secrets
        )
        return clean

    def _scrubbed(self, error: InferbusError) -> InferbusError:
        """The error without any key in its message (a provider may echo the key back)."""
        message = redact(error.message, self._secrets)
        if message == error.message:
            return error
        return InferbusError(
            error.code,
            message,
            retryable=error.retryable,
            retry_after_ms=error.retry_after_ms,
            reason=error.reason,
        )


async def _open_stream(
    target: CloudTarget,
    runtime: Runtime,
    job: JobRequest,
    drop_max_tokens: bool,
    limits_s: tuple[float, float],
    on_piece: PieceSink,
    on_model: ModelSink | None,
) -> _Opened:
    """Start the stream; return once its first piece reached the caller (the rest runs on),
    or raise its failure while nothing was sent, so that the chain can fail over.

    `limits_s`: how long the first piece may take, and the whole stream."""
    first_s, left_s = limits_s
    model = target.model.model
    first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def sink(piece: Piece) -> None:
        if not first.done():
            if on_model is not None:
                on_model(model)
            first.set_result(None)
        await on_piece(piece)

    call = call_of(job, model, drop_max_tokens=drop_max_tokens)
    rest = asyncio.create_task(stream_pieces(runtime, call, left_s, sink))
    try:
        waiting: set[asyncio.Future[Any]] = {rest, first}
        await asyncio.wait(waiting, timeout=first_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        rest.cancel()
        raise
    if not first.done() and not rest.done():
        rest.cancel()
        await asyncio.gather(rest, return_exceptions=True)
        raise InferbusError(ErrorCode.DEADLINE_EXCEEDED, "no first token in time")
    if first.done():
        return _Opened(target, runtime, rest=rest)
    reply = rest.result()  # raises the failure, if any
    if on_model is not None:
        on_model(model)
    return _Opened(target, runtime, reply=reply)
