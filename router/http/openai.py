"""What the OpenAI dialects (chat, embeddings, completions, models) share.

Every error on an OpenAI route is OpenAI's error body (`{"error": {message, type, code,
param}}`) with the status an official client maps to the right exception: 400
`BadRequestError`, 404 `NotFoundError` (unknown model or route; clients do not retry it),
429 `RateLimitError` with Retry-After, 5xx retried. A body's unknown OpenAI fields are
not dropped: `openai_job_fields` moves them under `extra` for the runtime to honour or
refuse by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.edge import Api, agent_of, retry_after_headers
from router.http.streams import SseChunks, stream_response
from services.errors import HTTP_STATUS, ErrorCode, InferbusError
from services.wire import JobRequest, JobResponse, openai_job_fields

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(
    code: ErrorCode | str, message: str, status: int, param: str | None = None
) -> JSONResponse:
    kind = _OPENAI_ERROR_TYPES.get(status, "api_error")
    name = code.value if isinstance(code, ErrorCode) else code
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": name, "param": param}},
        status_code=status,
    )


def openai_error_from(error: InferbusError) -> JSONResponse:
    """OpenAI's error body for one of ours; `param` is the field a BAD_REQUEST names."""
    field = error.message.partition(":")[0] if error.code == ErrorCode.BAD_REQUEST else ""
    # "body: ..." is pydantic's name for the whole request, not a parameter.
    param = field if field and " " not in field and field != "body" else None
    return openai_error(error.code, error.message, HTTP_STATUS[error.code], param)


def openai_error_of(response: JobResponse) -> JSONResponse:
    assert response.error is not None
    error = response.error
    answer = openai_error_from(InferbusError(error.code, error.message))
    answer.headers.update(retry_after_headers(response))
    return answer


def openai_error_answer(response: JobResponse, _route: object) -> JSONResponse:
    """`stream_response`'s answer for a stream that failed before its first piece."""
    return openai_error_of(response)


def include_usage(fields: dict[str, Any]) -> bool:
    """`stream_options.include_usage`: a last chunk with the usage and no choices."""
    options = fields.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def caller_agent(fields: dict[str, Any], request: Request) -> str | None:
    """The agent an OpenAI caller speaks for: `user`, else the `X-Agent-Id` header."""
    return agent_of(fields.get("user") or request.headers.get("x-agent-id"))


async def read_openai_job(
    api: Api,
    request: Request,
    label: str,
    started: float,
    shape: Callable[[dict[str, Any]], dict[str, Any] | InferbusError],
) -> tuple[JobRequest, dict[str, Any]] | JSONResponse:
    """An OpenAI body as a job (its own fields, `shape`d by the dialect, the rest under
    `extra`) plus the raw body; or the OpenAI error answer, already counted."""
    raw = await api.read_fields(request)
    shaped = shape(raw) if not isinstance(raw, InferbusError) else raw
    job = await api.job_of(openai_job_fields(shaped)) if isinstance(shaped, dict) else shaped
    if isinstance(job, InferbusError):
        api.refused(label, started, job)
        return openai_error_from(job)
    assert isinstance(raw, dict)
    return job, raw


Whole = Callable[[JobResponse, Route, JobRequest, dict[str, Any]], dict[str, Any]]
Fields = Callable[[dict[str, Any]], dict[str, Any] | InferbusError]


def _as_is(fields: dict[str, Any]) -> dict[str, Any]:
    return fields


async def serve_openai(
    api: Api,
    request: Request,
    label: str,
    whole: Whole,
    stream_as: Callable[[str, str | None, bool], SseChunks] | None,
    shape: Fields = _as_is,
) -> Response:
    """One OpenAI request, every dialect the same way: the body as a job, the one `infer`,
    the answer `whole` (or streamed as `stream_as` events when asked and the dialect
    streams), errors in OpenAI's shape; counted in the metrics as `label`."""
    started = time.perf_counter()
    parsed = await read_openai_job(api, request, label, started, shape)
    if isinstance(parsed, JSONResponse):
        return parsed
    job, raw = parsed
    call = api.call(request, job, caller_agent(raw, request))
    if job.stream and stream_as is not None:
        return await stream_response(
            api.serve,
            call,
            stream_as(job.job_id, job.model, include_usage(raw)),
            on_error_before_first_token=openai_error_answer,
            on_finished=api.finished(label, started),
        )
    response, route = await api.serve(call)
    api.finished(label, started)(response, route)
    if response.error is not None:
        return openai_error_of(response)
    return JSONResponse(whole(response, route, job, raw))


async def not_found(request: Request, _exc: Exception) -> JSONResponse:
    """Unknown paths: OpenAI's 404 under /v1 (clients raise NotFoundError), else plain."""
    message = f"no route {request.method} {request.url.path}"
    if request.url.path.startswith("/v1/"):
        return openai_error("NOT_FOUND", message, 404)
    return JSONResponse({"error": {"code": "NOT_FOUND", "message": message}}, 404)


async def method_not_allowed(request: Request, _exc: Exception) -> JSONResponse:
    message = f"{request.method} is not allowed on {request.url.path}"
    return openai_error("METHOD_NOT_ALLOWED", message, 405)
