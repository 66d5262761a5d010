"""One job's way through the worker: parse → admit → dedupe → run (DESIGN §4).

`admit` decides, without waiting on anything slow, what happens to a message: an answer
right away (bad request, expired, busy, replay, unknown model) or a job to run (or to
join, when the same key is already running). `run` and `join` produce the one final
answer. The NATS wiring around this lives in `worker.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from node_worker.admission import Admission
from node_worker.catalog import Catalog, CatalogModel
from node_worker.idempotency import IdempotencyStore, JobFingerprint, Running
from node_worker.metrics import WorkerMetrics
from services.big_json import decode_job
from services.bounds import embeddings_over_bus
from services.deadlines import left_ms, remaining_budget_ms
from services.errors import ErrorCode, InferbusError
from services.image_fetch import inline_url_images
from services.images import ImageSettings, refuse_urls, url_images
from services.keystore import Record
from services.needs import refusal
from services.runtimes.base import ChatCall, EmbedCall, Runtime, RuntimeTimings
from services.runtimes.calls import (
    ToolDeltaSink,
    chat_within,
    clean_text,
    embed_within,
    stream_within,
)
from services.shared_claims import Ran, Refused, SharedClaims
from services.token_times import TokenTimes
from services.tracing import Span, Tracing, runtime_trace
from services.wire import (
    JobRequest,
    JobResponse,
    JobType,
    Result,
    Timings,
    is_replayable,
    new_job_id,
    replay_pieces,
    slot_kind,
)

log = logging.getLogger("inferbus.worker.jobs")

DeltaSink = Callable[[str], Awaitable[None]]
# NATS's default max_payload, until the connection says what its server allows.
DEFAULT_BUS_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class JobLimits:
    default_timeout_ms: int
    max_request_bytes: int
    retry_after_ms: int
    images: ImageSettings = field(default_factory=ImageSettings)


@dataclass(frozen=True)
class Admitted:
    """A job that holds a slot and must be run, then released."""

    request: JobRequest
    job_type: JobType
    served: CatalogModel
    received_s: float
    deadline_s: float


@dataclass(frozen=True)
class Joined:
    """A duplicate of a job that is running now: it waits for that job's answer."""

    request: JobRequest
    running: Running
    received_s: float
    deadline_s: float


Decision = JobResponse | Admitted | Joined


class JobPipeline:
    def __init__(
        self,
        *,
        node_id: str,
        limits: JobLimits,
        admission: Admission,
        idempotency: IdempotencyStore,
        catalog: Callable[[], Catalog],
        metrics: WorkerMetrics,
        shared: SharedClaims | None = None,
        on_runtime_done: Callable[[Runtime, JobResponse], None] = lambda _runtime, _answer: None,
        on_other_model: Callable[[CatalogModel, str], None] = lambda _served, _named: None,
        monotonic: Callable[[], float] = time.monotonic,
        unix_ms: Callable[[], float] = lambda: time.time() * 1000.0,
        bus_limit: Callable[[], int] = lambda: DEFAULT_BUS_LIMIT,
        tracing: Tracing | None = None,
    ) -> None:
        self._node_id = node_id
        self._limits = limits
        self._admission = admission
        self._idempotency = idempotency
        self._catalog = catalog
        self._metrics = metrics
        self._shared = shared
        self._on_runtime_done = on_runtime_done
        # A runtime answered under another model's name than the one it was listed with:
        # it was restarted with another model since discovery.
        self._on_other_model = on_other_model
        self._monotonic = monotonic
        self._unix_ms = unix_ms
        # The most one message may carry (the NATS server's max_payload): an answer that
        # cannot fit is refused at once, never computed and then dropped.
        self._bus_limit = bus_limit
        self._tracing = tracing or Tracing(None, service="inferbus-worker")

    def guard_with(self, shared: SharedClaims) -> None:
        """Claim every key in the shared store before its runtime call (set at start)."""
        self._shared = shared

    @property
    def guarded(self) -> bool:
        """Whether keys are claimed in the shared store."""
        return self._shared is not None

    async def admit(self, data: bytes, subject_type: JobType, received_s: float) -> Decision:
        """Decide a message's fate; never raises, never waits on a runtime."""
        if len(data) > self._limits.max_request_bytes:
            return self._refuse(
                new_job_id(),
                subject_type,
                InferbusError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"job is {len(data)} bytes; this node takes at most "
                    f"{self._limits.max_request_bytes}",
                ),
            )
        decoded = await decode_job(data, default_type=subject_type)
        if isinstance(decoded, JobResponse):
            self._metrics.job_finished(subject_type, None, decoded, 0.0)
            return decoded.model_copy(update={"node_id": self._node_id})
        request = decoded
        job_type = request.type or subject_type

        budget_ms = remaining_budget_ms(
            timeout_ms=request.timeout_ms,
            deadline_unix_ms=request.deadline_unix_ms,
            default_timeout_ms=self._limits.default_timeout_ms,
            now_unix_ms=self._unix_ms(),
        )
        if budget_ms <= 0:
            return self._refuse(
                request.job_id,
                job_type,
                InferbusError(ErrorCode.DEADLINE_EXCEEDED, "the job's budget was spent on arrival"),
            )
        deadline_s = received_s + budget_ms / 1000.0

        unfit = self._unfit(request, job_type)
        if unfit is not None:
            return self._refuse(request.job_id, job_type, unfit)

        try:
            served: CatalogModel | None = self._catalog().resolve(request.model, job_type)
            unserved: InferbusError | None = None
        except InferbusError as error:
            served, unserved = None, error
        # The model as resolved: `model` omitted and named are the same job when they
        # resolve to the same model.
        model = served.name if served is not None else request.model
        fingerprint = JobFingerprint(request, data, job_type)
        # No await from here to begin(): nothing can start the same key in between.
        completed = self._idempotency.completed(request.key)
        if completed is not None:
            if not completed.same_job(fingerprint, model):
                return self._refuse(request.job_id, job_type, _mismatch(request.key))
            self._metrics.idempotency_hit("completed")
            return replayed(completed.response, request)
        running = self._idempotency.running(request.key)
        if running is not None:
            if not running.same_job(fingerprint, model):
                return self._refuse(request.job_id, job_type, _mismatch(request.key))
            self._metrics.idempotency_hit("running")
            return Joined(request, running, received_s, deadline_s)

        if served is None:
            assert unserved is not None
            return self._refuse(request.job_id, job_type, unserved)
        refused = refusal(
            request,
            job_type,
            model=served.name,
            capabilities=served.info.capabilities,
            node_id=self._node_id,
        )
        if refused is not None:
            return self._refuse(request.job_id, job_type, refused, model=served.name)

        if not self._admission.try_acquire(job_type):
            return self._refuse(
                request.job_id,
                job_type,
                InferbusError(
                    ErrorCode.BUSY,
                    f"all {job_type} slots on {self._node_id} are taken "
                    f"({self._admission.load()[slot_kind(job_type)].inflight} in flight)",
                    retry_after_ms=self._limits.retry_after_ms,
                ),
                model=served.name,
            )
        self._idempotency.begin(request.key, fingerprint, served.name)
        return Admitted(request, job_type, served, received_s, deadline_s)

    def _unfit(self, request: JobRequest, job_type: JobType) -> InferbusError | None:
        """Why this job cannot be run as sent, whatever model serves it; None if it can."""
        if job_type == "embed" and request.params.dimensions is not None:
            inputs = len(request.embed_inputs())
            return embeddings_over_bus([request.params.dimensions] * inputs, self._bus_limit())
        if job_type == "vision" and not request.has_images():
            return InferbusError(ErrorCode.BAD_REQUEST, "a vision job needs at least one image")
        if self._limits.images.remote_urls == "refuse":
            try:
                refuse_urls(request)
            except InferbusError as error:
                return error
        return None

    async def run(
        self,
        job: Admitted,
        on_delta: DeltaSink | None = None,
        on_tool_calls: ToolDeltaSink | None = None,
        trace: Span | None = None,
    ) -> JobResponse:
        """Run an admitted job within its deadline. Never raises but for cancellation, and
        always releases its slot and the duplicates waiting on it.

        A `stream: true` job hands each piece of text to `on_delta` (and each piece of a
        tool call to `on_tool_calls`) as the runtime produces it; the answer then carries
        the whole text and calls too (and is what duplicates replay).
        """
        started_s = self._monotonic()
        job_id = job.request.job_id
        response: JobResponse | None = None
        try:
            response = await self._call_once(job, started_s, on_delta, on_tool_calls, trace)
        except Exception as exc:
            log.exception("job failed unexpectedly", extra={"job_id": job_id})
            response = internal(job_id, self._node_id, exc)
        finally:
            # Cut short (the caller cancelled, or the worker stops): no word on the
            # runtime's health, so the runtime is told "cancelled", not "failed".
            ran = response if response is not None else cancelled(job_id, self._node_id)
            if response is None:  # what the waiters get
                response = stopped(job_id, self._node_id)
            self._admission.release(job.job_type)
            if not ran.cached:  # a replay from the shared store called no runtime
                self._on_runtime_done(job.served.runtime, ran)
            self._idempotency.finish(job.request.key, response)
            self._metrics.job_finished(
                job.job_type, job.served.name, response, self._monotonic() - job.received_s
            )
        return response

    async def _call_once(
        self,
        job: Admitted,
        started_s: float,
        on_delta: DeltaSink | None,
        on_tool_calls: ToolDeltaSink | None,
        trace: Span | None,
    ) -> JobResponse:
        """The runtime call, or, with a shared store, the answer of whoever holds the key."""
        if self._shared is None:
            return await self._call_runtime(job, started_s, on_delta, on_tool_calls, trace)
        request = job.request
        fingerprint, model = request.fingerprint(), job.served.name
        outcome = await self._shared.run_once(
            request.key,
            Record(state="running", job=fingerprint, model=model),
            lambda found: found.job == fingerprint and found.model == model,
            job.deadline_s,
            lambda: self._call_runtime(job, started_s, on_delta, on_tool_calls, trace),
            lambda answer: answer,
        )
        if isinstance(outcome, Ran):
            return outcome.value
        answer = outcome.answer
        if isinstance(outcome, Refused):
            return answer.model_copy(update={"job_id": request.job_id, "node_id": self._node_id})
        self._metrics.idempotency_hit("shared")
        if on_delta is not None and request.stream and answer.result is not None:
            for piece in replay_pieces(answer.result):
                if isinstance(piece, str):
                    await on_delta(piece)
                elif on_tool_calls is not None:
                    await on_tool_calls(piece)
        return replayed(answer, request)

    async def _call_runtime(
        self,
        job: Admitted,
        started_s: float,
        on_delta: DeltaSink | None,
        on_tool_calls: ToolDeltaSink | None,
        trace: Span | None,
    ) -> JobResponse:
        """The runtime call in a span of its own, its context sent to the runtime."""
        with self._tracing.span("runtime call", parent=trace, kind="client") as span:
            served = job.served
            span.set("inferbus.model", served.name)
            span.set("inferbus.runtime", served.runtime.kind)
            times = TokenTimes(self._monotonic())
            with runtime_trace(span.headers()):
                response = await self._runtime_answer(
                    job, started_s, on_delta, on_tool_calls, times
                )
            self._finished_call(response, times, span)
            return response

    def _finished_call(self, response: JobResponse, times: TokenTimes, span: Span) -> None:
        """The call's times and tokens, in its span and the metrics."""
        usage = response.result.usage if response.result is not None else None
        if times.first_s is not None:
            span.set("inferbus.ttft_ms", round(times.first_s * 1000.0, 3))
        if usage is not None:
            span.set("inferbus.tokens.prompt", usage.prompt_tokens)
            span.set("inferbus.tokens.completion", usage.completion_tokens)
        if response.error is not None:
            span.error(response.error.code.value)
        self._metrics.runtime_call(
            response.model or "",
            response.runtime or "",
            seconds=self._monotonic() - times.started,
            times=times,
            usage=usage,
            ok=response.error is None,
        )

    async def _runtime_answer(
        self,
        job: Admitted,
        started_s: float,
        on_delta: DeltaSink | None,
        on_tool_calls: ToolDeltaSink | None,
        times: TokenTimes,
    ) -> JobResponse:
        served, request = job.served, job.request
        remaining_s = left_ms(job.deadline_s, started_s) / 1000.0
        done = True if request.stream else None
        fields = {
            "node_id": self._node_id,
            "model": served.name,
            "runtime": served.runtime.kind,
            "done": done,
        }
        try:
            if url_images(request):  # admitted only with images.remote_urls = fetch
                job = replace(job, request=await inline_url_images(request, self._limits.images))
            result, spent = await self._result_of(job, remaining_s, on_delta, on_tool_calls, times)
        except InferbusError as error:
            return JobResponse.failure(
                request.job_id, error, **fields, timings=self._timings(job, started_s)
            )
        return JobResponse(
            job_id=request.job_id,
            status="ok",
            result=result,
            timings=self._timings(job, started_s, spent),
            **fields,
        )

    async def _result_of(
        self,
        job: Admitted,
        remaining_s: float,
        on_delta: DeltaSink | None,
        on_tool_calls: ToolDeltaSink | None,
        times: TokenTimes,
    ) -> tuple[Result, RuntimeTimings | None]:
        """The runtime's answer as our Result, and its timings; raises InferbusError."""
        served, request = job.served, job.request
        if job.job_type == "embed":
            params = request.params
            embed_call = EmbedCall(
                served.runtime_id, request.embed_inputs(), params.dimensions, request.extra
            )
            embedded = await embed_within(served.runtime, embed_call, remaining_s)
            too_large = embeddings_over_bus([len(v) for v in embedded.vectors], self._bus_limit())
            if too_large is not None:
                raise too_large
            # The adapter checked every number already; validating millions of them again
            # would hold the event loop.
            embedding = Result.model_construct(
                finish_reason="stop",
                usage=embedded.usage,
                cost=self._cost(served, embedded.usage.prompt_tokens, 0),
                embeddings=embedded.vectors,
            )
            return embedding, embedded.timings
        call = ChatCall.of(served.runtime_id, request)
        if request.stream and on_delta is not None:
            monotonic = self._monotonic

            async def timed(delta: str) -> None:
                times.piece(monotonic())
                await on_delta(delta)

            reply = await stream_within(served.runtime, call, remaining_s, timed, on_tool_calls)
        else:
            reply = await chat_within(served.runtime, call, remaining_s)
        if reply.model is not None and not served.answers_as(reply.model):
            self._on_other_model(served, reply.model)
        answer = Result(
            text=clean_text(reply.text),
            finish_reason=reply.finish_reason,
            usage=reply.usage,
            cost=self._cost(served, reply.usage.prompt_tokens, reply.usage.completion_tokens),
            tool_calls=reply.tool_calls,
            logprobs=reply.logprobs,
            stop_sequence=reply.stop_sequence,
        )
        return answer, reply.timings

    @staticmethod
    def _cost(served: CatalogModel, prompt_tokens: int, completion_tokens: int) -> float | None:
        pricing = served.pricing
        return pricing.cost(prompt_tokens, completion_tokens) if pricing is not None else None

    async def join(self, job: Joined) -> JobResponse:
        """Wait for the running job with the same key and take its answer.

        Only an answer that would be cached is a replay (`cached: true`); a failure of the
        first job (busy runtime, its shorter deadline) is passed on as what it is.
        """
        remaining_s = left_ms(job.deadline_s, self._monotonic()) / 1000.0
        try:
            async with asyncio.timeout(max(remaining_s, 0.0)):
                first = await asyncio.shield(job.running.outcome)
        except TimeoutError:
            return self._refuse(
                job.request.job_id,
                job.request.type or "llm",
                InferbusError(ErrorCode.DEADLINE_EXCEEDED, "budget spent waiting for the same job"),
            )
        if is_replayable(first):
            return replayed(first, job.request)
        done = True if job.request.stream else None
        return first.model_copy(update={"job_id": job.request.job_id, "done": done})

    def _timings(
        self, job: Admitted, started_s: float, spent: RuntimeTimings | None = None
    ) -> Timings:
        now = self._monotonic()
        split = spent or RuntimeTimings()
        return Timings(
            queue_ms=round((started_s - job.received_s) * 1000.0, 3),
            backend_ms=round((now - started_s) * 1000.0, 3),
            total_ms=round((now - job.received_s) * 1000.0, 3),
            load_ms=split.load_ms,
            prompt_ms=split.prompt_ms,
            eval_ms=split.eval_ms,
        )

    def _refuse(
        self, job_id: str, job_type: JobType, error: InferbusError, model: str | None = None
    ) -> JobResponse:
        response = JobResponse.failure(job_id, error, node_id=self._node_id, model=model)
        self._metrics.job_finished(job_type, model, response, 0.0)
        return response


def replayed(response: JobResponse, request: JobRequest) -> JobResponse:
    """A kept answer given to a duplicate: its own job id, `cached`, and `done` when it
    asked for a stream (the worker first sends it as `replay_pieces` says)."""
    done = True if request.stream else None
    return response.model_copy(update={"job_id": request.job_id, "cached": True, "done": done})


def stopped(job_id: str, node_id: str) -> JobResponse:
    """The answer to a job cut short because the worker is stopping: retry elsewhere."""
    error = InferbusError(
        ErrorCode.BACKEND_UNAVAILABLE, "the worker stopped before the job finished"
    )
    return JobResponse.failure(job_id, error, node_id=node_id)


def cancelled(job_id: str, node_id: str) -> JobResponse:
    """A job its caller cancelled (`node.<id>.cancel`, or the client went away)."""
    error = InferbusError(ErrorCode.CANCELLED, "the caller cancelled the job")
    return JobResponse.failure(job_id, error, node_id=node_id)


def internal(job_id: str, node_id: str, exc: Exception) -> JobResponse:
    """The answer when our own code failed: the job still gets one."""
    error = InferbusError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    return JobResponse.failure(job_id, error, node_id=node_id)


def _mismatch(key: str) -> InferbusError:
    return InferbusError(
        ErrorCode.IDEMPOTENCY_MISMATCH,
        f"idempotency key {key!r} was used for a different job",
    )
