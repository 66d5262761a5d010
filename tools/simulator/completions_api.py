"""OpenAI's legacy `POST /v1/completions`, as vLLM and llama.cpp server still serve it.

A raw `prompt` in (a string, or a list holding one), `choices[].text` out; streamed as SSE
`text_completion` chunks ending with `data: [DONE]` (openai-openapi CreateCompletionRequest
/ CreateCompletionResponse). Generation, faults and errors are the chat endpoint's: the
text is `expected_text(model, prompt, n)`.
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

from aiohttp import web

from tools.simulator.flow import Timings, json_response, serve_generation
from tools.simulator.models import count_words
from tools.simulator.openai_api import (
    SYSTEM_FINGERPRINT,
    OpenAIChat,
    _ChunkEncoder,
    _token_limit,
    _usage,
)
from tools.simulator.plan import GenRequest, Plan, Rejection

_ID_PREFIX = "cmpl-" + secrets.token_hex(6)
_id_counter = itertools.count(1)


def _prompt(payload: dict[str, Any]) -> str | Rejection:
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return Rejection("bad_request", "prompt must be a string (or a list of one)")
    suffix = payload.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        return Rejection("bad_request", "suffix must be a string")
    return prompt


class OpenAICompletions(OpenAIChat):
    """POST /v1/completions: errors as the chat endpoint's, text instead of messages."""

    def parse(self, payload: dict[str, Any]) -> GenRequest | Rejection:
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return Rejection("bad_request", "you must provide a model parameter")
        prompt = _prompt(payload)
        if isinstance(prompt, Rejection):
            return prompt
        stream = payload.get("stream")
        if stream is not None and not isinstance(stream, bool):
            return Rejection("bad_request", "stream must be a boolean")
        limit = _token_limit(payload)
        if isinstance(limit, Rejection):
            return limit
        options = payload.get("stream_options")
        return GenRequest(
            model=model,
            prompt_text=prompt,
            prompt_tokens=max(1, count_words(prompt)),
            max_tokens=limit,
            stream=bool(stream),
            include_usage=bool(
                stream and isinstance(options, dict) and options.get("include_usage")
            ),
        )

    def complete(self, request: GenRequest, plan: Plan, timings: Timings) -> web.Response:
        body = {
            "id": f"{_ID_PREFIX}{next(_id_counter)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "text": plan.text,
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                }
            ],
            "usage": _usage(plan),
        }
        return json_response(200, body)

    def encoder(self, request: GenRequest) -> _TextChunkEncoder:
        return _TextChunkEncoder(request)


class _TextChunkEncoder(_ChunkEncoder):
    """`text_completion` chunks: the chat encoder's framing, `text` instead of `delta`."""

    object_name = "text_completion"

    @staticmethod
    def _text_choice(text: str, finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]

    def open(self) -> bytes:
        return b""

    def piece(self, text: str) -> bytes:
        return self._event(self._text_choice(text))

    def close(self, plan: Plan, timings: Timings) -> bytes:
        tail = self._event(self._text_choice("", plan.finish_reason))
        if self._include_usage:
            tail += self._event([], _usage(plan))
        return tail + b"data: [DONE]\n\n"


def add_completions_routes(app: web.Application) -> None:
    completions = OpenAICompletions()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_generation(request, completions)

    app.router.add_post("/v1/completions", handler)
