"""The native dialect: `POST /infer` takes a JobRequest (DESIGN §3) and answers a
JobResponse with its `route`; `stream: true` answers NDJSON chunks, then the answer."""

from __future__ import annotations

import time

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.edge import Api, agent_of, retry_after_headers, status_of
from router.http.streams import NdjsonLines, stream_response
from services.errors import InferbusError
from services.wire import JobResponse


def native_answer(response: JobResponse, route: Route) -> JSONResponse:
    body = response.model_dump(mode="json", exclude_none=True) | {"route": route.model_dump()}
    return JSONResponse(body, status_of(response), headers=retry_after_headers(response))


def native_routes(api: Api) -> list[routing.BaseRoute]:
    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        fields = await api.read_fields(request)
        job = await api.job_of(fields) if not isinstance(fields, InferbusError) else fields
        if isinstance(job, InferbusError):
            api.refused("infer", started, job)
            return native_answer(JobResponse.failure("", job), Route())
        assert not isinstance(fields, InferbusError)
        call = api.call(request, job, agent_of(fields.get("agent_id")))
        if job.stream:
            return await stream_response(
                api.serve,
                call,
                NdjsonLines(job.job_id),
                on_error_before_first_token=native_answer,
                on_finished=api.finished("infer", started),
            )
        response, route = await api.serve(call)
        api.finished("infer", started)(response, route)
        return native_answer(response, route)

    return [routing.Route("/infer", infer, methods=["POST"])]
