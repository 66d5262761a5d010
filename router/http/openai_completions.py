"""OpenAI's legacy Completions dialect: `POST /v1/completions`, whole and streamed.

The prompt goes to the model as is (`raw: true`, no chat template), `suffix` for
fill-in-the-middle (the model needs `insert`). One prompt per request: a list of several
would be several choices, which a job does not answer (send one request each).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import Asked
from router.http.openai import OpenAIDialect, include_usage
from router.http.streams import SseChunks, StreamFormat, usage_body
from services.errors import ErrorCode, InferbusError
from services.wire import JobRequest, JobResponse, Piece


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


def text_completion(response: JobResponse, route: Route, job: JobRequest) -> dict[str, Any]:
    result = response.result
    return {
        "id": f"cmpl-{response.job_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": response.model or job.model or "",
        "choices": [
            _choice(
                result.text if result else "", (result.finish_reason if result else None) or "stop"
            )
        ],
        "usage": usage_body(response),
        "route": route.model_dump(),
    }


class CompletionChunks(SseChunks):
    """`text_completion` events as OpenAI streams them (tool calls have no place here)."""

    object_name = "text_completion"
    id_prefix = "cmpl"

    def delta(self, piece: Piece) -> bytes:
        """Text only: a completion has no place for tool calls or reasoning."""
        return super().delta(piece) if isinstance(piece, str) else b""

    def _piece_choice(self, piece: Piece) -> dict[str, Any]:
        return _choice(piece if isinstance(piece, str) else "", None)

    def _finish_choice(self, finish: str) -> dict[str, Any]:
        return _choice("", finish)


class Completions(OpenAIDialect):
    name = "completions"
    path = "/v1/completions"

    def shape(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        return completion_fields(body)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        return JSONResponse(text_completion(response, route, asked.job))

    def stream(self, asked: Asked) -> StreamFormat:
        job = asked.job
        return CompletionChunks(job.job_id, job.model, include_usage(asked.body))
