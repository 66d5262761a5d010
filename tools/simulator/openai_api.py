"""The OpenAI-compatible API, as vLLM, llama.cpp server and LM Studio serve it.

Shapes follow openai-python's ChatCompletion / ChatCompletionChunk types and OpenAI's error
envelope ``{"error": {"message", "type", "param", "code"}}``; streams are SSE ``data:``
events ending with ``data: [DONE]``. ``GET /health`` answers like llama.cpp server.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tools.simulator.cloud_api import key_gate
from tools.simulator.feature_wire import (
    openai_fields,
    openai_tool_call_deltas,
    openai_tool_calls,
)
from tools.simulator.features import logprob_entry
from tools.simulator.flow import (
    JSON_HEADERS,
    STATE_KEY,
    Timings,
    json_bytes,
    json_response,
    serve_generation,
)
from tools.simulator.llama_server import model_entry
from tools.simulator.models import count_words
from tools.simulator.plan import GenRequest, Plan, Rejection

SYSTEM_FINGERPRINT = "fp_inferbus_sim"
_ID_PREFIX = "chatcmpl-" + secrets.token_hex(6)
_id_counter = itertools.count(1)


def _error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json_response(status, body)


def _usage(plan: Plan) -> dict[str, int]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }


def _content_text(content: Any) -> tuple[str, bool] | Rejection:
    """A message's text and whether it carries images; content is a string or parts."""
    if content is None:
        return "", False
    if isinstance(content, str):
        return content, False
    if not isinstance(content, list):
        return Rejection("bad_request", "message content must be a string or an array of parts")
    texts: list[str] = []
    with_images = False
    for part in content:
        if not isinstance(part, dict):
            return Rejection("bad_request", "each content part must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                return Rejection("bad_request", "a text part needs a string 'text'")
            texts.append(text)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                return Rejection("bad_request", "an image_url part needs 'image_url.url'")
            with_images = True
    return "\n".join(texts), with_images


def _token_limit(payload: dict[str, Any]) -> int | Rejection | None:
    """``max_completion_tokens`` (current) or ``max_tokens`` (legacy), at least 1."""
    for param in ("max_completion_tokens", "max_tokens"):
        limit = payload.get(param)
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return Rejection("bad_request", f"{param} must be an integer >= 1")
        return limit
    return None


class OpenAIChat:
    """POST /v1/chat/completions.

    `served_as`, when it names a model, is llama-server's single model: every request runs
    on it and the answer names it, whatever model the request asked for; and a continued
    final assistant message (a prefill) is echoed in front of the answer, in the whole
    answer's content and with a stream's first piece, as llama-server does.
    """

    def __init__(self, served_as: Callable[[], str | None] = lambda: None) -> None:
        self._served_as = served_as

    stream_headers: dict[str, str] = {  # noqa: RUF012
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
    }

    def parse(self, payload: dict[str, Any]) -> GenRequest | Rejection:
        model = self._served_as() or payload.get("model")
        if not isinstance(model, str) or not model:
            return Rejection("bad_request", "you must provide a model parameter")
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return Rejection("bad_request", "messages must be a non-empty array")
        words, last_user, with_images = 0, "", False
        for message in messages:
            if not isinstance(message, dict):
                return Rejection("bad_request", "each message must be an object")
            content = _content_text(message.get("content"))
            if isinstance(content, Rejection):
                return content
            text, images = content
            words += count_words(text)
            with_images = with_images or images
            if message.get("role") == "user":
                last_user = text
        stream = payload.get("stream")
        if stream is not None and not isinstance(stream, bool):
            return Rejection("bad_request", "stream must be a boolean")
        options = payload.get("stream_options")
        if options is not None and (not stream or not isinstance(options, dict)):
            return Rejection(
                "bad_request",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            )
        limit = _token_limit(payload)
        if isinstance(limit, Rejection):
            return limit
        features = openai_fields(payload, messages)
        if isinstance(features, Rejection):
            return features
        return GenRequest(
            model=model,
            prompt_text=last_user,
            prompt_tokens=max(1, words),
            has_images=with_images,
            max_tokens=limit,
            stream=bool(stream),
            include_usage=bool(options and options.get("include_usage")),
            **features,
        )

    def reject(self, rejection: Rejection, model: str) -> web.Response:
        if rejection.kind == "not_found":
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _error(404, message, "invalid_request_error", code="model_not_found")
        if rejection.kind == "no_vision":
            message = f"model '{model}' does not support image input"
            return _error(400, message, "invalid_request_error", param="messages")
        if rejection.kind == "no_tools":  # vLLM started without tool parsing says this
            message = (
                '"auto" tool choice requires --enable-auto-tool-choice and '
                "--tool-call-parser to be set"
            )
            return _error(400, message, "BadRequestError", param="tools")
        if rejection.kind == "no_chat":
            message = f"model '{model}' does not support chat completions"
            return _error(400, message, "invalid_request_error", param="model")
        if rejection.kind == "context_exceeded":
            message = (
                f"This model's maximum context length is {rejection.context_window} tokens. "
                f"However, your messages resulted in {rejection.prompt_tokens} tokens. "
                "Please reduce the length of the messages."
            )
            return _error(
                400, message, "invalid_request_error", "messages", "context_length_exceeded"
            )
        if rejection.kind == "error":
            return _error(500, _SERVER_ERROR, "server_error")
        return _error(400, rejection.message or "invalid request", "invalid_request_error")

    def complete(self, request: GenRequest, plan: Plan, timings: Timings) -> web.Response:
        choice: dict[str, Any] = {
            "index": 0,
            "message": _message(plan, echoed=self._echoed(request)),
            "logprobs": _logprobs(plan.pieces) if plan.logprobs else None,
            "finish_reason": plan.finish_reason,
        }
        llama_server = self._served_as() is not None
        if not llama_server:  # vLLM: the stop string that ended the answer (null when none did)
            choice["stop_reason"] = plan.stop_sequence
        body = {
            "id": f"{_ID_PREFIX}{next(_id_counter)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
            "usage": _usage(plan),
        }
        if llama_server:
            body["timings"] = llamacpp_timings(plan, timings)
        return json_response(200, body)

    def encoder(self, request: GenRequest) -> _ChunkEncoder:
        llama_server = self._served_as() is not None
        return _ChunkEncoder(request, timings=llama_server, echoed=self._echoed(request))

    def _echoed(self, request: GenRequest) -> str:
        return request.prefill if self._served_as() is not None else ""


_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


def llamacpp_timings(plan: Plan, timings: Timings) -> dict[str, Any]:
    """llama-server's `timings` (server-task.cpp `result_timings`), measured: reading the
    prompt until the first token, generating after it."""
    prompt_ms = max(1, timings.first_token_ns - timings.planned_ns) / 1e6
    predicted_ms = max(1, time.perf_counter_ns() - timings.first_token_ns) / 1e6
    prompt_n, predicted_n = max(1, plan.prompt_tokens), max(1, plan.completion_tokens)
    return {
        "prompt_n": plan.prompt_tokens,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n,
        "prompt_per_second": prompt_n / prompt_ms * 1000,
        "predicted_n": plan.completion_tokens,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n,
        "predicted_per_second": predicted_n / predicted_ms * 1000,
    }


def _message(plan: Plan, echoed: str = "") -> dict[str, Any]:
    if plan.tool_calls:
        return {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": openai_tool_calls(plan),
        }
    return {"role": "assistant", "content": echoed + plan.text, "refusal": None}


def _logprobs(pieces: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {"content": [logprob_entry(piece) for piece in pieces], "refusal": None}


class _ChunkEncoder:
    """SSE ``chat.completion.chunk`` events sharing one id and creation time."""

    object_name = "chat.completion.chunk"

    def __init__(self, request: GenRequest, *, timings: bool = False, echoed: str = "") -> None:
        self._timings = timings  # llama-server: `timings` on the finish chunk
        self._echoed = echoed  # llama-server: a prefill, sent again with the first piece
        self._id = f"{_ID_PREFIX}{next(_id_counter)}"
        self._created = int(time.time())
        self._model = request.model
        self._include_usage = request.include_usage
        self._logprobs = request.logprobs

    def _event(
        self,
        choices: list[dict[str, Any]],
        usage: dict[str, int] | None = None,
        timings: dict[str, Any] | None = None,
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": self.object_name,
            "created": self._created,
            "model": self._model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self._include_usage:
            # With include_usage every chunk carries "usage": null but the last one.
            chunk["usage"] = usage
        if timings is not None:
            chunk["timings"] = timings
        return b"data: " + json_bytes(chunk) + b"\n\n"

    @staticmethod
    def _choice(
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]

    def open(self) -> bytes:
        return self._event(self._choice({"role": "assistant", "content": ""}))

    def piece(self, text: str) -> bytes:
        logprobs = _logprobs([text]) if self._logprobs else None
        text, self._echoed = self._echoed + text, ""
        return self._event(self._choice({"content": text}, logprobs=logprobs))

    def tool_call_events(self, plan: Plan) -> list[bytes]:
        return [
            self._event(self._choice({"tool_calls": [delta]}))
            for delta in openai_tool_call_deltas(plan)
        ]

    def close(self, plan: Plan, timings: Timings) -> bytes:
        spent = llamacpp_timings(plan, timings) if self._timings else None
        choice = self._choice({}, plan.finish_reason)
        if not self._timings:  # vLLM: the stop string that ended the answer
            choice[0]["stop_reason"] = plan.stop_sequence
        tail = self._event(choice, timings=spent)
        if self._include_usage:
            tail += self._event([], _usage(plan))
        return tail + b"data: [DONE]\n\n"

    def error(self) -> bytes:
        body = {
            "error": {"message": _SERVER_ERROR, "type": "server_error", "param": None, "code": None}
        }
        return b"data: " + json_bytes(body) + b"\n\n"


def add_openai_routes(app: web.Application, started_unix: int) -> None:
    """Register the OpenAI-compatible endpoints and ``/health`` on ``app``."""
    state = app[STATE_KEY]
    models = state.models
    models_body = json_bytes(
        {
            "object": "list",
            "data": [
                {
                    "id": model.name,
                    "object": "model",
                    "created": started_unix,
                    "owned_by": "inferbus-simulator",
                    "max_model_len": model.context_window,
                }
                for model in models.values()
            ],
        }
    )
    health_body = json_bytes({"status": "ok"})

    def single_model() -> str | None:
        if state.llama_server is None:
            return None
        return next(iter(models))

    chat = OpenAIChat(single_model)

    async def list_models(request: web.Request) -> web.Response:
        traits = state.llama_server
        if traits is not None:  # llama-server's shape; its one model may have been swapped
            data = [model_entry(model, traits, started_unix) for model in models.values()]
            return json_response(200, {"object": "list", "data": data})
        return web.Response(body=models_body, headers=JSON_HEADERS)

    async def health(request: web.Request) -> web.Response:
        return web.Response(body=health_body, headers=JSON_HEADERS)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        refusal = await key_gate(request, state)
        if refusal is not None:
            return refusal
        return await serve_generation(request, chat)

    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat_completions)
