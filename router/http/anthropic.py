"""Anthropic's Messages dialect: `POST /v1/messages` (whole and streamed) and
`POST /v1/messages/count_tokens`.

The body becomes a job (router/http/anthropic_request.py), is served like every other
dialect's, and is answered in Anthropic's shapes (router/http/anthropic_answer.py); every
error is Anthropic's error body with the status the official clients map to their
exception classes. `anthropic-version` is accepted whatever it says (the shapes written
are those of `2023-06-01`, the only version there is).

`count_tokens` asks the fleet itself: the same request with `max_tokens: 1`, whose
`prompt_tokens` is the serving runtime's own count of the templated prompt (what it
would be billed for). A runtime that reports no prompt count (Ollama with the whole
prompt cached) gets an estimate, four characters a token, flagged `"estimated": true`.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.anthropic_answer import AnthropicEvents, error_body, message_body
from router.http.anthropic_request import messages_job_fields
from router.http.edge import Api, agent_of, cached_headers, retry_after_headers
from router.http.streams import stream_response
from services.errors import HTTP_STATUS, InferbusError
from services.wire import JobRequest, JobResponse

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


def estimated_tokens(fields: dict[str, Any]) -> int:
    """About how many tokens a job's input is: its text and tools, four characters each."""
    size = sum(len(str(message.get("content") or "")) for message in fields["messages"])
    size += len(json.dumps(fields.get("tools") or [], separators=(",", ":")))
    return max(1, math.ceil(size / CHARS_PER_TOKEN))


class AnthropicMessages:
    """The dialect: how a body becomes a job and how its answers are written."""

    name = "anthropic"

    def __init__(self, api: Api) -> None:
        self._api = api

    async def _job(
        self, request: Request, started: float, *, counting: bool = False
    ) -> tuple[JobRequest, dict[str, Any]] | JSONResponse:
        body = await self._api.read_fields(request)
        if isinstance(body, dict) and counting:
            body = {**body, "max_tokens": 1, "stream": False}
        fields = messages_job_fields(body) if isinstance(body, dict) else body
        job = await self._api.job_of(fields) if isinstance(fields, dict) else fields
        if isinstance(job, InferbusError):
            self._api.refused(self.name, started, job)
            return anthropic_error(job)
        assert isinstance(fields, dict)
        return job, fields

    async def messages(self, request: Request) -> Response:
        started = time.perf_counter()
        parsed = await self._job(request, started)
        if isinstance(parsed, JSONResponse):
            return parsed
        job, _ = parsed
        call = self._api.call(request, job, agent_of(request.headers.get("x-agent-id")))
        model = job.model or ""
        if job.stream:
            return await stream_response(
                self._api.serve,
                call,
                AnthropicEvents(job.job_id, model),
                on_error_before_first_token=anthropic_failure,
                on_finished=self._api.finished(self.name, started),
            )
        response, route = await self._api.serve(call)
        self._api.finished(self.name, started)(response, route)
        if response.error is not None:
            return anthropic_failure(response, route)
        return JSONResponse(message_body(response, route, model), headers=cached_headers(response))

    async def count_tokens(self, request: Request) -> Response:
        started = time.perf_counter()
        parsed = await self._job(request, started, counting=True)
        if isinstance(parsed, JSONResponse):
            return parsed
        job, fields = parsed
        call = self._api.call(request, job, agent_of(request.headers.get("x-agent-id")))
        response, route = await self._api.serve(call)
        self._api.finished("anthropic_count", started)(response, route)
        if response.error is not None:
            return anthropic_failure(response, route)
        counted = response.result.usage.prompt_tokens if response.result else 0
        if counted > 0:
            return JSONResponse({"input_tokens": counted})
        return JSONResponse({"input_tokens": estimated_tokens(fields), "estimated": True})


def anthropic_routes(api: Api) -> list[routing.BaseRoute]:
    dialect = AnthropicMessages(api)
    return [
        routing.Route("/v1/messages", dialect.messages, methods=["POST"]),
        routing.Route("/v1/messages/count_tokens", dialect.count_tokens, methods=["POST"]),
    ]
