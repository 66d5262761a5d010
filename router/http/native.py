"""The native dialect: `POST /infer` takes a JobRequest (DESIGN §3) and answers a
JobResponse with its `route`; `stream: true` answers NDJSON chunks, then the answer.
Its errors are JobResponses too (`status: error`, `error: {code, message, ...}`)."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import PLAIN_ERRORS, Asked, JobFields
from router.http.edge import agent_of, retry_after_headers, status_of
from router.http.streams import NdjsonLines, StreamFormat
from services.errors import InferbusError
from services.wire import JobResponse


def native_answer(response: JobResponse, route: Route) -> JSONResponse:
    body = response.model_dump(mode="json", exclude_none=True) | {"route": route.model_dump()}
    return JSONResponse(body, status_of(response), headers=retry_after_headers(response))


class NativeErrors:
    """A refusal is a failed JobResponse; unknown paths outside every dialect's prefix
    answer in the plain shape."""

    prefix = "/infer"

    def refusal(self, error: InferbusError) -> Response:
        return native_answer(JobResponse.failure("", error), Route())

    def unknown(self, code: str, message: str, status: int) -> Response:
        return PLAIN_ERRORS.unknown(code, message, status)


class Native:
    name = "infer"
    path = "/infer"
    errors = NativeErrors()

    def read(self, body: dict[str, Any], headers: Headers) -> JobFields:
        return JobFields(body, agent_of(body.get("agent_id")))

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        return native_answer(response, route)

    def stream(self, asked: Asked) -> StreamFormat:
        return NdjsonLines(asked.job.job_id)

    def failed(self, response: JobResponse, route: Route) -> Response:
        return native_answer(response, route)
