"""OpenAI's Chat Completions dialect: `POST /v1/chat/completions`, whole and streamed.

Every field of the request reaches the job (tools, tool_choice, response_format,
penalties, logprobs, `max_completion_tokens`; unknown ones under `extra`); the answer is
OpenAI's exact shape: `message.tool_calls` with `finish_reason: "tool_calls"` (content
null when the model only called tools), `logprobs` when asked, and in a stream
`delta.tool_calls` pieces with their `index` (router/http/streams.py `OpenAIChunks`).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import Asked
from router.http.openai import OpenAIDialect, include_usage
from router.http.openai_checks import chat_fields
from router.http.streams import OpenAIChunks, StreamFormat, usage_body
from services.errors import InferbusError
from services.wire import JobRequest, JobResponse


def openai_completion(response: JobResponse, route: Route, job: JobRequest) -> dict[str, Any]:
    result = response.result
    calls = result.tool_calls if result else None
    text = result.text if result else ""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = [call.model_dump(mode="json") for call in calls]
    if result is not None and result.thinking:
        message["reasoning_content"] = result.thinking
    finish = (result.finish_reason if result else None) or ("tool_calls" if calls else "stop")
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    choice["logprobs"] = result.logprobs if result else None
    return {
        "id": f"chatcmpl-{response.job_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model or job.model or "",
        "choices": [choice],
        "usage": usage_body(response),
        "route": route.model_dump(),
    }


class ChatCompletions(OpenAIDialect):
    name = "openai"
    path = "/v1/chat/completions"

    def shape(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        """The body as it is, unless OpenAI would refuse its conversation."""
        return chat_fields(body)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        return JSONResponse(openai_completion(response, route, asked.job))

    def stream(self, asked: Asked) -> StreamFormat:
        job = asked.job
        return OpenAIChunks(job.job_id, job.model, include_usage(asked.body))
