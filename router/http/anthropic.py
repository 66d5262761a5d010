"""Anthropic's Messages dialect: `POST /v1/messages` (whole and streamed) and
`POST /v1/messages/count_tokens`, on the dialect template (router/http/dialect.py).

The body becomes a job (router/http/anthropic_request.py) and its answers are written in
Anthropic's shapes (router/http/anthropic_answer.py); every error under `/v1/messages` is
Anthropic's error body with the status the official clients map to their exception
classes. `anthropic-version` is accepted whatever it says (the shapes written are those
of `2023-06-01`, the only version there is).

`count_tokens` asks the fleet itself: the same request with `max_tokens: 1`, whose
`prompt_tokens` is the serving runtime's own count of the templated prompt (what it
would be billed for). A runtime that reports no prompt count (Ollama with the whole
prompt cached) gets an estimate, four characters a token, flagged `"estimated": true`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.anthropic_answer import AnthropicEvents, error_body, message_body
from router.http.anthropic_request import messages_job_fields, thinking_omitted
from router.http.dialect import Asked, JobFields
from router.http.edge import agent_of, retry_after_headers
from router.http.streams import StreamFormat
from services.errors import HTTP_STATUS, InferbusError
from services.wire import JobResponse

CHARS_PER_TOKEN = 4


def anthropic_error(error: InferbusError) -> JSONResponse:
    status = HTTP_STATUS[error.code]
    return JSONResponse(error_body(error.code, error.message, status), status_code=status)


def anthropic_failure(response: JobResponse, _route: Route) -> JSONResponse:
    """A job that failed (before any piece of its stream), in Anthropic's shape."""
    assert response.error is not None
    answer = anthropic_error(InferbusError(response.error.code, response.error.message))
    answer.headers.update(retry_after_headers(response))
    return answer


def estimated_tokens(body: dict[str, Any]) -> int:
    """About how many tokens a request's input is: its system prompt, messages and tools
    as JSON, four characters a token."""
    given = [body.get("system"), body.get("messages"), body.get("tools")]
    return max(1, math.ceil(len(json.dumps(given, separators=(",", ":"))) / CHARS_PER_TOKEN))


class AnthropicErrors:
    """Anthropic's error body, for every path under `/v1/messages`."""

    prefix = "/v1/messages"

    def refusal(self, error: InferbusError) -> Response:
        return anthropic_error(error)

    def unknown(self, code: str, message: str, status: int) -> Response:
        return JSONResponse(error_body(code, message, status), status_code=status)


ANTHROPIC_ERRORS = AnthropicErrors()


# The job's fields a Messages body spells its own way.
ANTHROPIC_SPELLED = {
    "params.max_tokens": "max_tokens",
    "params.temperature": "temperature",
    "params.top_p": "top_p",
    "params.stop": "stop_sequences",
    "params.user": "metadata.user_id",
    "response_format.json_schema.schema": "output_config.format.schema",
    "extra.chat_template_kwargs.enable_thinking": "thinking",
}


def _read(body: dict[str, Any], headers: Headers) -> JobFields | InferbusError:
    fields = messages_job_fields(body)
    if isinstance(fields, InferbusError):
        return fields
    return JobFields(fields, agent_of(headers.get("x-agent-id")), ANTHROPIC_SPELLED)


class AnthropicMessages:
    name = "anthropic"
    path = "/v1/messages"
    errors = ANTHROPIC_ERRORS

    def read(self, body: dict[str, Any], headers: Headers) -> JobFields | InferbusError:
        return _read(body, headers)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        omitted = thinking_omitted(asked.body)
        return JSONResponse(message_body(response, route, asked.job.model or "", omitted))

    def stream(self, asked: Asked) -> StreamFormat:
        omitted = thinking_omitted(asked.body)
        return AnthropicEvents(asked.job.job_id, asked.job.model or "", omitted)

    def failed(self, response: JobResponse, route: Route) -> Response:
        return anthropic_failure(response, route)


class CountTokens:
    """`count_tokens`: the request run for one token, answered with its prompt's count."""

    name = "anthropic_count_tokens"
    path = "/v1/messages/count_tokens"
    errors = ANTHROPIC_ERRORS

    def read(self, body: dict[str, Any], headers: Headers) -> JobFields | InferbusError:
        return _read({**body, "max_tokens": 1, "stream": False}, headers)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        counted = response.result.usage.prompt_tokens if response.result else 0
        if counted > 0:
            return JSONResponse({"input_tokens": counted})
        return JSONResponse({"input_tokens": estimated_tokens(asked.body), "estimated": True})

    def stream(self, asked: Asked) -> StreamFormat | None:
        return None

    def failed(self, response: JobResponse, route: Route) -> Response:
        return anthropic_failure(response, route)
