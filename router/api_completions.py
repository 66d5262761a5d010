"""OpenAI's legacy Completions dialect: `POST /v1/completions`, whole and streamed.

The prompt goes to the model as is (`raw: true`, no chat template), `suffix` for
fill-in-the-middle (the model needs `insert`). One prompt per request: a list of several
would be several choices, which a job does not answer (send one request each).
"""

from __future__ import annotations

import time
from typing import Any

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.api_openai import (
    caller_agent,
    include_usage,
    openai_error_answer,
    openai_error_of,
    read_openai_job,
)
from router.http_edge import Api
from router.route import Route
from router.streams import SSE_DONE, sse, stream_error, stream_response, usage_body
from services.errors import ErrorCode, InferbusError
from services.wire import JobResponse, Piece


def completion_fields(raw: dict[str, Any]) -> dict[str, Any] | InferbusError:
    prompt = raw.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return InferbusError(
            ErrorCode.BAD_REQUEST, "prompt: one string (a list of several is several requests)"
        )
    return {**raw, "prompt": prompt, "raw": True}


def _choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}


def text_completion(
    response: JobResponse, route: Route, requested_model: str | None
) -> dict[str, Any]:
    result = response.result
    return {
        "id": f"cmpl-{response.job_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": response.model or requested_model or "",
        "choices": [
            _choice(
                result.text if result else "", (result.finish_reason if result else None) or "stop"
            )
        ],
        "usage": usage_body(response),
        "route": route.model_dump(),
    }


class CompletionChunks:
    """`data: {text_completion}` events as OpenAI streams them, usage if asked, `[DONE]`."""

    media_type = "text/event-stream"

    def __init__(self, job_id: str, model: str | None, with_usage: bool) -> None:
        self._id = f"cmpl-{job_id}"
        self._model = model or ""
        self._created = int(time.time())
        self._with_usage = with_usage

    def use_model(self, model: str) -> None:
        self._model = model

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(
            {
                "id": self._id,
                "object": "text_completion",
                "created": self._created,
                "model": self._model,
                "choices": choices,
                **extra,
            }
        )

    def delta(self, piece: Piece) -> bytes:
        return self._event([_choice(piece if isinstance(piece, str) else "", None)])

    def final(self, response: JobResponse, route: Route) -> bytes:
        if response.model:
            self._model = response.model
        if response.error is not None:
            return stream_error(response)
        result = response.result
        finish = (result.finish_reason if result else None) or "stop"
        out = self._event([_choice("", finish)], route=route.model_dump())
        if self._with_usage:
            out += self._event([], usage=usage_body(response))
        return out + SSE_DONE


def completions_routes(api: Api) -> list[routing.BaseRoute]:
    async def completions(request: Request) -> Response:
        started = time.perf_counter()
        parsed = await read_openai_job(api, request, "completions", started, completion_fields)
        if isinstance(parsed, JSONResponse):
            return parsed
        job, raw = parsed
        agent_id = caller_agent(raw, request)
        if job.stream:
            events = CompletionChunks(job.job_id, job.model, include_usage(raw))
            return await stream_response(
                lambda sink: api.infer(
                    request, job, agent_id=agent_id, on_delta=sink, on_model=events.use_model
                ),
                events,
                on_error_before_first_token=openai_error_answer,
                on_finished=api.finished("completions", started),
            )
        response, route = await api.infer(request, job, agent_id=agent_id)
        api.finished("completions", started)(response, route)
        if response.error is not None:
            return openai_error_of(response)
        return JSONResponse(text_completion(response, route, job.model))

    return [routing.Route("/v1/completions", completions, methods=["POST"])]
