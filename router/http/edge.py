"""What every API dialect of the router shares: reading a body, the one call, metrics.

Each dialect (router/http/*.py) turns its own request shape into a `JobRequest`; `Api`
makes it the request's one `Call` (router/serving/call.py) and serves it through the
idempotency gate in front of the dispatcher; the dialect shapes the answer its own way.
The checks every body gets live here once: the size limit (never buffered past it),
usable JSON, a JSON object, the `Idempotency-Key` header, image size and policy.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect, Request

from router.admission.idempotency import IdempotencyGate
from router.admission.line import Admission
from router.admission.tenants import ANONYMOUS, Tenant, effective_class
from router.attempts.resume import RESUME_HEADER, caller_allows_resume
from router.attempts.route import Route
from router.config import AdmissionSettings, HttpSettings
from router.http.images import checked_images
from router.http.live.feed import LiveFeed
from router.http.live.rows import RequestFacts
from router.metrics import RouterMetrics
from router.serving.call import Call, CallProgress, Calls, Served, trace_context
from services.big_json import loads_request
from services.errors import HTTP_STATUS, ErrorCode, InferbusError
from services.images import ImageSettings
from services.token_times import TokenTimes
from services.tracing import TRACEPARENT, TRACESTATE, Span, Tracing
from services.wire import JobRequest, JobResponse, Piece, request_from_fields

Finished = Callable[[JobResponse, Route], None]


def status_of(response: JobResponse) -> int:
    return 200 if response.error is None else HTTP_STATUS[response.error.code]


def retry_after_headers(response: JobResponse) -> dict[str, str]:
    """`Retry-After` (whole seconds, rounded up) when the answer says when to come back."""
    error = response.error
    if error is None or error.retry_after_ms is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(error.retry_after_ms / 1000)))}


CACHED_HEADER = "x-inferbus-cached"


def cached_headers(response: JobResponse) -> dict[str, str]:
    """`x-inferbus-cached: true` on an answer replayed for its idempotency key (a dialect
    whose body has no `cached` field still says so)."""
    return {CACHED_HEADER: "true"} if response.cached else {}


def largest_image_bytes(job: JobRequest) -> int:
    """The decoded size of the job's largest inline image (URLs count as nothing)."""
    largest = 0
    for message in job.chat_messages():
        for image in message.all_images:
            if image.startswith(("http://", "https://")):
                continue
            encoded = image.partition("base64,")[2] or image
            largest = max(largest, len(encoded) * 3 // 4)
    return largest


async def read_body(request: Request, limit: int) -> bytes | InferbusError:
    """The body, refused as soon as it grows past `limit` (never buffered beyond it);
    CANCELLED when the client goes away before all of it came (its doing, not a bug)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _too_large(int(declared), limit)
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                return _too_large(size, limit, at_least=True)
            parts.append(part)
    except ClientDisconnect:
        return InferbusError(
            ErrorCode.CANCELLED, f"the client went away after {size} bytes of its body"
        )
    return b"".join(parts)


def _too_large(size: int, limit: int, *, at_least: bool = False) -> InferbusError:
    more = "more than " if at_least else ""
    return InferbusError(
        ErrorCode.PAYLOAD_TOO_LARGE, f"body is {more}{size} bytes; the limit is {limit}"
    )


async def parse_json(body: bytes) -> Any:
    """The JSON value, or BAD_REQUEST for anything the parser (or UTF-8) cannot take:
    not JSON, nested too deep, more JSON containers than a job may hold (a big body is
    parsed in pieces off the event loop), lone surrogates that could never be sent on."""
    try:
        raw = await loads_request(body)
        # Lone surrogates ("\ud800") are valid JSON but no valid UTF-8: refuse them here,
        # not when the job is encoded for a node. One can only come from a `\u` escape
        # or from the bytes of one (UTF-8 lead byte 0xED): other bodies skip the check.
        if _MAY_HOLD_SURROGATE.search(body):
            json.dumps(raw, ensure_ascii=False).encode()
    except (ValueError, RecursionError, UnicodeError) as error:
        return InferbusError(ErrorCode.BAD_REQUEST, f"the body is not usable JSON ({error})"[:200])
    return raw


_MAY_HOLD_SURROGATE = re.compile(rb"\\u[dD]|\xed")


def agent_of(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Api:
    """The router as every dialect sees it: the settings it reads, the gate it serves
    calls through (router/service.py wires them)."""

    http: HttpSettings
    images: ImageSettings
    calls: Calls
    gate: IdempotencyGate
    metrics: RouterMetrics
    line: Admission | None = None  # None: every caller anonymous, in the default class
    tracing: Tracing = field(default_factory=lambda: Tracing(None, service="inferbus-router"))
    live: LiveFeed | None = None  # the live page's feed, told of every answer

    async def read_fields(self, request: Request) -> dict[str, Any] | InferbusError:
        """The body as a JSON object, the Idempotency-Key header applied."""
        body = await read_body(request, self.http.max_body_bytes)
        if isinstance(body, InferbusError):
            return body
        raw = await parse_json(body)
        if isinstance(raw, InferbusError):
            return raw
        if not isinstance(raw, dict):
            return InferbusError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
        key = request.headers.get("idempotency-key")
        if key:
            raw["idempotency_key"] = key
        return raw

    async def job_of(self, fields: dict[str, Any]) -> JobRequest | InferbusError:
        """A job from fields, its images checked (size, URL policy)."""
        decoded = request_from_fields(fields)  # no `type`: the router decides (images → vision)
        if isinstance(decoded, InferbusError):
            return decoded
        limit = self.http.max_image_bytes
        too_big = largest_image_bytes(decoded)
        if too_big > limit:
            return InferbusError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"an image is {too_big} bytes; the limit is {limit}"
            )
        return await checked_images(decoded, self.images)

    def call(
        self,
        request: Request,
        job: JobRequest,
        agent_id: str | None,
        stream_options: object = None,
    ) -> Call:
        """The request's one call: its job, tenant and class, deadline, trace context,
        whether a broken stream may resume (the `x-inferbus-resume` header, the body's
        `stream_options.resume`), and how its wait in line is heard (its client gone,
        the queue time header)."""
        headers = request.headers
        found: Tenant | None = getattr(request.state, "tenant", None)
        anonymous = self.line.directory.anonymous if self.line is not None else None
        tenant = found or anonymous or Tenant(ANONYMOUS, "")
        settings = self.line.settings if self.line is not None else AdmissionSettings()
        own_class = tenant.priority or settings.fallback_class
        priority, note = effective_class(own_class, headers.get("x-priority"), settings)
        trace = trace_context(headers.get("traceparent"), headers.get("tracestate"))
        resume = caller_allows_resume(headers.get(RESUME_HEADER), stream_options)

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        # The call's progress, once it is made: holding the call itself here would make a
        # cycle (call -> on_queued -> call) that only the garbage collector frees.
        progress: CallProgress | None = None

        def queued(queue_ms: float) -> None:
            request.state.queue_ms = queue_ms
            if progress is not None:
                progress.queue_ms = queue_ms
            if queue_ms > 0:  # a call that started at once has no wait to show
                attributes = {"inferbus.tenant": tenant.name, "inferbus.class": priority}
                self.tracing.past("queue wait", queue_ms / 1000.0, attributes)

        call = self.calls.make(
            job,
            tenant=tenant.scope,
            agent_id=agent_id,
            trace=trace,
            tenant_name=tenant.name,
            priority=priority,
            priority_note=note,
            gone=gone,
            on_queued=queued,
            resume=resume,
        )
        progress = call.progress
        return call

    async def serve(self, call: Call) -> Served:
        """The one way every dialect serves a call (idempotency gate → dispatcher), in the
        request's span (a child of the caller's trace context when it sent one); a stream's
        pieces are timed on the way (`call.progress.pieces`)."""
        trace = call.trace
        parent = {TRACEPARENT: trace.traceparent} if trace is not None else None
        if parent is not None and trace is not None and trace.tracestate:
            parent[TRACESTATE] = trace.tracestate
        with self.tracing.span("request", parent=parent, kind="server") as span:
            if call.on_piece is not None:
                call = _timed(call)
            response, route = await self.gate.serve(call)
            _describe(span, call, response, route)
            return response, route

    def finished(self, api: str, started: float, call: Call | None = None) -> Finished:
        """Counts one answer of dialect `api` in the metrics (and tells the live page)
        when called."""

        def count(response: JobResponse, route: Route) -> None:
            status = response.error.code.value if response.error else "ok"
            seconds = time.perf_counter() - started
            pieces = call.progress.pieces if call is not None else None
            self.metrics.answered(api, route, status, seconds)
            self.metrics.served(route, response, seconds, pieces)
            if self.live is not None:
                facts = RequestFacts(
                    api,
                    time.time(),
                    seconds,
                    stream=call is not None and call.job.stream,
                    ttft_s=pieces.first_s if pieces is not None else None,
                    queue_ms=call.progress.queue_ms if call is not None else None,
                    model=call.job.model if call is not None else None,
                )
                self.live.answered(facts, response, route)

        return count

    def refused(self, api: str, started: float, error: InferbusError) -> None:
        """Counts a request refused before it became a job."""
        seconds = time.perf_counter() - started
        self.metrics.answered(api, Route(), error.code.value, seconds)
        if self.live is not None:
            refused = JobResponse.failure("", error)
            self.live.answered(RequestFacts(api, time.time(), seconds), refused, Route())


def _timed(call: Call) -> Call:
    """The call with its pieces' times noted as they pass to its sink."""
    sink = call.on_piece
    assert sink is not None
    times = call.progress.pieces = TokenTimes(time.perf_counter())

    async def timed(piece: Piece) -> None:
        times.piece(time.perf_counter())
        await sink(piece)

    return call.streamed_to(timed, call.on_model)


def _describe(span: Span, call: Call, response: JobResponse, route: Route) -> None:
    span.set("inferbus.tenant", call.tenant)
    span.set("inferbus.model", call.job.model)
    span.set("inferbus.stream", call.job.stream)
    span.set("inferbus.via", route.via)
    span.set("inferbus.node", route.node or route.provider)
    span.set("inferbus.served_model", route.model)
    span.set("inferbus.attempts", len(route.attempts))
    pieces = call.progress.pieces
    if pieces is not None and pieces.first_s is not None:
        span.set("inferbus.ttft_ms", round(pieces.first_s * 1000.0, 3))
    span.set("inferbus.outcome", response.error.code.value if response.error else "ok")
    if response.error is not None:
        span.error(response.error.code.value)
