"""OpenAI's Responses dialect: `POST /v1/responses`, stateless, whole and streamed.

The body becomes a job (router/http/responses_request.py), is served like every other
dialect's, and is answered as a response object or its event stream
(router/http/responses_answer.py). Errors are OpenAI's error body (router/http/openai.py),
so the official client raises its usual exception classes. Nothing is stored: a
response cannot be fetched again, and `previous_response_id` / `store: true` are refused
by name.
"""

from __future__ import annotations

import time

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.http.edge import Api, cached_headers
from router.http.openai import caller_agent, openai_error_answer, openai_error_from, openai_error_of
from router.http.responses_answer import ResponsesEvents, whole_response
from router.http.responses_request import responses_job_fields
from router.http.streams import stream_response
from services.errors import InferbusError

LABEL = "responses"


def responses_routes(api: Api) -> list[routing.BaseRoute]:
    async def responses(request: Request) -> Response:
        started = time.perf_counter()
        body = await api.read_fields(request)
        fields = responses_job_fields(body) if isinstance(body, dict) else body
        job = await api.job_of(fields) if isinstance(fields, dict) else fields
        if isinstance(job, InferbusError):
            api.refused(LABEL, started, job)
            return openai_error_from(job)
        assert isinstance(body, dict)
        call = api.call(request, job, caller_agent(body, request))
        model = job.model or ""
        if job.stream:
            return await stream_response(
                api.serve,
                call,
                ResponsesEvents(job.job_id, model, body),
                on_error_before_first_token=openai_error_answer,
                on_finished=api.finished(LABEL, started),
            )
        response, route = await api.serve(call)
        api.finished(LABEL, started)(response, route)
        if response.error is not None:
            return openai_error_of(response)
        return JSONResponse(whole_response(response, route, body), headers=cached_headers(response))

    return [routing.Route("/v1/responses", responses, methods=["POST"])]
