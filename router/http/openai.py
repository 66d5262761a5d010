"""What the OpenAI dialects (chat, embeddings, completions, models) share.

Every error on an OpenAI route is OpenAI's error body (`{"error": {message, type, code,
param}}`) with the status an official client maps to the right exception: 400
`BadRequestError`, 404 `NotFoundError` (unknown model or route; clients do not retry it),
429 `RateLimitError` with Retry-After, 5xx retried. A body's unknown OpenAI fields are
not dropped: `openai_job_fields` moves them under `extra` for the runtime to honour or
refuse by name.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import Asked, JobFields
from router.http.edge import agent_of, retry_after_headers
from router.http.streams import StreamFormat
from services.errors import HTTP_STATUS, ErrorCode, InferbusError
from services.wire import JobResponse, Params, openai_job_fields

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


# OpenAI sends the sampling parameters at the top level; the job keeps them in `params`.
OPENAI_SPELLED = {f"params.{name}": name for name in Params.model_fields}


def include_usage(fields: dict[str, Any]) -> bool:
    """`stream_options.include_usage`: a last chunk with the usage and no choices."""
    options = fields.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def caller_agent(fields: dict[str, Any], headers: Headers) -> str | None:
    """The agent an OpenAI caller speaks for: `user`, else the `X-Agent-Id` header."""
    return agent_of(fields.get("user") or headers.get("x-agent-id"))


class OpenAIErrors:
    """OpenAI's error body, for every path under `/v1/` (module doc)."""

    prefix = "/v1/"

    def refusal(self, error: InferbusError) -> Response:
        return openai_error_from(error)

    def unknown(self, code: str, message: str, status: int) -> Response:
        return openai_error(code, message, status)


OPENAI_ERRORS = OpenAIErrors()


class OpenAIDialect:
    """What the OpenAI dialects share: how a body is read (`shape`, then its unknown
    fields under `extra`), the caller's agent, and the error shape. A dialect adds its
    `name`, `path`, `answer` and `stream`, and `shape` when its body needs one."""

    errors: OpenAIErrors = OPENAI_ERRORS

    def shape(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        """The body in the job's names, before unknown fields move under `extra`."""
        return body

    def read(self, body: dict[str, Any], headers: Headers) -> JobFields | InferbusError:
        shaped = self.shape(body)
        if isinstance(shaped, InferbusError):
            return shaped
        fields = openai_job_fields(shaped)
        return JobFields(fields, caller_agent(body, headers), OPENAI_SPELLED)

    def stream(self, asked: Asked) -> StreamFormat | None:
        return None

    def failed(self, response: JobResponse, route: Route) -> Response:
        return openai_error_of(response)
