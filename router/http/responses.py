"""OpenAI's Responses dialect: `POST /v1/responses`, stateless, whole and streamed, on
the dialect template (router/http/dialect.py).

The body becomes a job (router/http/responses_request.py) and its answer a response
object or its event stream (router/http/responses_answer.py). Errors are OpenAI's error
body (router/http/openai.py), so the official client raises its usual exception
classes. Nothing is stored: a response cannot be fetched again, and
`previous_response_id` / `store: true` are refused by name.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import Asked, JobFields
from router.http.openai import OpenAIDialect, caller_agent
from router.http.responses_answer import ResponsesEvents, whole_response
from router.http.responses_request import responses_job_fields
from router.http.streams import StreamFormat
from services.errors import InferbusError
from services.wire import JobResponse

# The job's fields a Responses body spells its own way.
RESPONSES_SPELLED = {
    "params.max_tokens": "max_output_tokens",
    "params.temperature": "temperature",
    "params.top_p": "top_p",
    "params.user": "user",
    "response_format.json_schema.schema": "text.format.schema",
    "extra.chat_template_kwargs.enable_thinking": "reasoning.effort",
}


class Responses(OpenAIDialect):
    name = "responses"
    path = "/v1/responses"

    def read(self, body: dict[str, Any], headers: Headers) -> JobFields | InferbusError:
        fields = responses_job_fields(body)
        if isinstance(fields, InferbusError):
            return fields
        return JobFields(fields, caller_agent(body, headers), RESPONSES_SPELLED)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        return JSONResponse(whole_response(response, route, asked.body))

    def stream(self, asked: Asked) -> StreamFormat:
        return ResponsesEvents(asked.job.job_id, asked.job.model or "", asked.body)
