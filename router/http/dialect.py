"""The template every API dialect is written on: a dialect says how its body becomes a job,
how a whole answer and a stream are written in its shapes, and its error body;
`dialect_route` does everything else, the same way for all of them.

How a request goes (`dialect_route`):

    body (size limit, JSON object, Idempotency-Key header)      edge.Api.read_fields
      → Dialect.read(body, headers): the job's fields, the agent
      → the job (images checked)                                  edge.Api.job_of
      → the call (tenant, deadline, trace context)                edge.Api.call
      → served through the idempotency gate and the dispatcher    edge.Api.serve
      → Dialect.answer / Dialect.stream (its StreamFormat) / Dialect.failed
    any refusal on the way: Dialect.errors.refusal(error), counted in the metrics;
    any unexpected exception: logged once with its stack, answered as a 500 INTERNAL in
    the dialect's error shape (after a stream's first piece: its error event).

Adding a dialect (Ollama's `/api/chat`, Anthropic's `/v1/messages`, ...):

1. One module, `router/http/<dialect>.py`, with a class that implements `Dialect`:
   `name` (its metrics label), `path` (the POST route), `errors` (an `ErrorShape`: the
   error body of its family and the path prefix under which unknown paths and methods
   answer in it; dialects of one family share one), `read`, `answer`, `stream`
   (a `streams.StreamFormat`, or None if it does not stream) and `failed`.
2. One line in `router/http/app.py`'s `DIALECTS`.

Everything a dialect needs from the router comes through these methods' arguments; it
never sees the dispatcher. Routes that serve no job (`/v1/models`, `/api/tags`, the
operator's) stay plain Starlette routes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette import routing
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from router.attempts.route import Route
from router.http.edge import Api, cached_headers
from router.http.streams import INTERNAL_MESSAGE, StreamFormat, stream_response
from services.errors import HTTP_STATUS, ErrorCode, InferbusError
from services.wire import JobRequest, JobResponse

__all__ = [
    "PLAIN_ERRORS",
    "Asked",
    "Dialect",
    "DialectPaths",
    "ErrorShape",
    "JobFields",
    "as_spelled",
    "dialect_endpoint",
    "dialect_route",
    "shape_for",
]

log = logging.getLogger("inferbus.router.http")


@dataclass(frozen=True, slots=True)
class JobFields:
    """A body read by its dialect: the job's fields by their native names (what
    `services.wire.request_from_fields` takes), the agent the caller speaks for, and how
    the dialect spells the job's fields it renamed (`params.max_tokens` → `max_tokens`),
    so a refusal of the job names the field the caller sent."""

    fields: dict[str, Any]
    agent_id: str | None = None
    spelled: Mapping[str, str] = field(default_factory=dict)


def as_spelled(error: InferbusError, spelled: Mapping[str, str]) -> InferbusError:
    """A BAD_REQUEST naming a job field (`params.max_tokens: ...`) with the field as the
    caller's dialect spells it; other errors as they are."""
    if error.code != ErrorCode.BAD_REQUEST:
        return error
    named, colon, reason = error.message.partition(":")
    for prefix in sorted(spelled, key=len, reverse=True):
        if colon and (named == prefix or named.startswith(f"{prefix}.")):
            return InferbusError(error.code, f"{spelled[prefix]}{named[len(prefix) :]}:{reason}")
    return error


def spelled_failure(response: JobResponse, spelled: Mapping[str, str]) -> JobResponse:
    """A failed answer whose BAD_REQUEST names a job field (a model that cannot do what a
    field asks, found at selection) with the field as the caller's dialect spells it."""
    error = response.error
    if error is None or error.code != ErrorCode.BAD_REQUEST or not spelled:
        return response
    renamed = as_spelled(InferbusError(error.code, error.message), spelled).message
    if renamed == error.message:
        return response
    return response.model_copy(update={"error": error.model_copy(update={"message": renamed})})


@dataclass(frozen=True, slots=True)
class Asked:
    """What was asked, for writing the answer: the job and the body as sent."""

    job: JobRequest
    body: dict[str, Any]


class ErrorShape(Protocol):
    """A dialect family's error body (all OpenAI routes share one, all Ollama routes one)."""

    @property
    def prefix(self) -> str:
        """Unknown paths and methods under it answer in this shape (the longest wins)."""
        ...

    def refusal(self, error: InferbusError) -> Response:
        """A request refused before it was served, or one that failed unexpectedly."""
        ...

    def unknown(self, code: str, message: str, status: int) -> Response:
        """An unknown path (404 NOT_FOUND) or method (405 METHOD_NOT_ALLOWED)."""
        ...


class Dialect(Protocol):
    """One API dialect: its route, how its body becomes a job, how it answers."""

    @property
    def name(self) -> str:
        """Its `api` label in the metrics."""
        ...

    @property
    def path(self) -> str:
        """The POST route it answers."""
        ...

    @property
    def errors(self) -> ErrorShape:
        """Its family's error body."""
        ...

    def read(self, body: dict[str, Any], headers: Headers) -> JobFields | InferbusError:
        """The body as a job's fields (and the agent), or BAD_REQUEST naming the field."""
        ...

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        """The whole answer to a job that was served (`response.error` is None)."""
        ...

    def stream(self, asked: Asked) -> StreamFormat | None:
        """How a streamed job (`stream: true`) is written; None: always answered whole."""
        ...

    def failed(self, response: JobResponse, route: Route) -> Response:
        """The answer to a job that failed (`response.error` is set), streamed or not
        (a stream that fails before its first piece is answered this way)."""
        ...


@dataclass(frozen=True, slots=True)
class PlainErrors:
    """The shape of paths no dialect owns: `{"error": {"code", "message"}}`."""

    prefix: str = "/"

    def refusal(self, error: InferbusError) -> Response:
        return self.unknown(error.code.value, error.message, HTTP_STATUS[error.code])

    def unknown(self, code: str, message: str, status: int) -> Response:
        return JSONResponse({"error": {"code": code, "message": message}}, status)


PLAIN_ERRORS = PlainErrors()


def shape_for(path: str, shapes: Iterable[ErrorShape]) -> ErrorShape:
    """The error shape of the longest prefix of `path`; the plain one when none is."""
    best: ErrorShape = PLAIN_ERRORS
    for shape in shapes:
        if path.startswith(shape.prefix) and len(shape.prefix) > len(best.prefix):
            best = shape
    return best


Endpoint = Callable[[Request], Awaitable[Response]]


def dialect_route(api: Api, dialect: Dialect) -> routing.Route:
    """The POST route of `dialect`, served the one way (module doc)."""
    return routing.Route(dialect.path, dialect_endpoint(api, dialect), methods=["POST"])


def dialect_endpoint(api: Api, dialect: Dialect) -> Endpoint:
    """What answers a POST to `dialect`'s path (module doc)."""

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await _serve(api, dialect, request, started)
        except Exception:
            log.exception("%s %s failed unexpectedly", request.method, request.url.path)
            return _refused(
                api, dialect, started, InferbusError(ErrorCode.INTERNAL, INTERNAL_MESSAGE)
            )

    return endpoint


class DialectPaths:
    """A POST to a dialect's path goes straight to its endpoint; every other request to
    `app` (Starlette: the plain routes, unknown paths and methods in their error shapes).
    The endpoints answer every exception themselves, so the dialects' hot path skips
    Starlette's middleware and route matching, about a tenth of the router's CPU."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, Endpoint]) -> None:
        self._app = app
        self._endpoints = dict(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self._endpoints.get(scope["path"])
            if endpoint is not None:
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)


async def _serve(api: Api, dialect: Dialect, request: Request, started: float) -> Response:
    body = await api.read_fields(request)
    if isinstance(body, InferbusError):
        return _refused(api, dialect, started, body)
    read = dialect.read(body, request.headers)
    if isinstance(read, InferbusError):
        return _refused(api, dialect, started, read)
    job = await api.job_of(read.fields)
    if isinstance(job, InferbusError):
        return _refused(api, dialect, started, as_spelled(job, read.spelled))
    asked = Asked(job, body)
    call = api.call(request, job, read.agent_id, body.get("stream_options"))
    finished = api.finished(dialect.name, started, call)
    form = dialect.stream(asked) if job.stream else None
    if form is not None:

        def failed(response: JobResponse, route: Route) -> Response:
            return dialect.failed(spelled_failure(response, read.spelled), route)

        return await stream_response(
            api.serve,
            call,
            form,
            on_error_before_first_token=failed,
            on_finished=finished,
        )
    response, route = await api.serve(call)
    finished(response, route)
    if response.error is not None:
        return dialect.failed(spelled_failure(response, read.spelled), route)
    answer = dialect.answer(response, route, asked)
    answer.headers.update(cached_headers(response))
    return answer


def _refused(api: Api, dialect: Dialect, started: float, error: InferbusError) -> Response:
    api.refused(dialect.name, started, error)
    return dialect.errors.refusal(error)


def error_handlers(shapes: Iterable[ErrorShape]) -> Mapping[Any, Any]:
    """Starlette's handlers for unknown paths (404), methods (405) and any exception a
    plain route lets out (500; the server logs its stack), each answering in the error
    shape of the path's prefix."""
    known = tuple(shapes)

    async def not_found(request: Request, _exc: Exception) -> Response:
        message = f"no route {request.method} {request.url.path}"
        return shape_for(request.url.path, known).unknown("NOT_FOUND", message, 404)

    async def method_not_allowed(request: Request, _exc: Exception) -> Response:
        message = f"{request.method} is not allowed on {request.url.path}"
        return shape_for(request.url.path, known).unknown("METHOD_NOT_ALLOWED", message, 405)

    async def internal(request: Request, _exc: Exception) -> Response:
        error = InferbusError(ErrorCode.INTERNAL, INTERNAL_MESSAGE)
        return shape_for(request.url.path, known).refusal(error)

    return {404: not_found, 405: method_not_allowed, Exception: internal}
