"""Embeddings in both wire formats: Ollama `POST /api/embed`, OpenAI `POST /v1/embeddings`.

Ollama (api/types.go EmbedRequest/EmbedResponse): `input` a string or a list, optional
`dimensions`; answers `{"model", "embeddings": [[...]], "prompt_eval_count", durations}`.
OpenAI (CreateEmbeddingRequest/Response): the same input, `encoding_format` float (base64
is refused here: our adapter never asks for it); answers `{"object": "list", "data":
[{"object": "embedding", "index", "embedding"}], "model", "usage"}`. Vectors come from
`features.embedding`, so tests know them exactly. Latency applies; faults do not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tools.simulator.features import embedding
from tools.simulator.flow import STATE_KEY, json_response, read_json_object
from tools.simulator.models import count_words
from tools.simulator.plan import Rejection
from tools.simulator.state import SimState


def _inputs(payload: dict[str, Any]) -> list[str] | str:
    raw = payload.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
        return raw
    return "input must be a string or a non-empty list of strings"


def _dimensions(payload: dict[str, Any], own: int) -> int | str:
    raw = payload.get("dimensions")
    if raw is None:
        return own
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        return "dimensions must be an integer >= 1"
    return raw


async def _embed(
    request: web.Request, *, openai: bool
) -> tuple[str, list[list[float]], int] | web.Response:
    """(model, vectors, tokens), or the error answer in the request's format."""
    state: SimState = request.app[STATE_KEY]

    def fail(status: int, message: str) -> web.Response:
        if openai:
            error = {"message": message, "type": "invalid_request_error", "param": None}
            return json_response(status, {"error": {**error, "code": None}})
        return json_response(status, {"error": message})

    payload = read_json_object(await request.read())
    if isinstance(payload, Rejection):
        return fail(400, payload.message)
    model_name = payload.get("model")
    if not isinstance(model_name, str) or not model_name:
        return fail(400, "model is required")
    state.calls[model_name] += 1
    model = state.models.get(model_name)
    if model is None:
        return fail(404, f"model '{model_name}' not found")
    if not model.embedding:
        return fail(400, f"model '{model_name}' does not support embeddings")
    inputs = _inputs(payload)
    dimensions = _dimensions(payload, model.embedding_dimensions)
    if isinstance(inputs, str) or isinstance(dimensions, str):
        return fail(400, inputs if isinstance(inputs, str) else str(dimensions))
    if openai and payload.get("encoding_format") not in (None, "float"):
        return fail(400, "this server answers encoding_format float only")
    if state.latency_ms > 0 and await state.pause(state.latency_ms / 1000):
        return fail(503, "the server is stopping")
    vectors = [embedding(model_name, text, dimensions) for text in inputs]
    tokens = sum(max(1, count_words(text)) for text in inputs)
    return model_name, vectors, tokens


def _ollama_body(model: str, vectors: list[list[float]], tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": 1,
        "load_duration": 1,
        "prompt_eval_count": tokens,
    }


def _openai_body(model: str, vectors: list[list[float]], tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": vector}
            for index, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


Render = Callable[[str, list[list[float]], int], dict[str, Any]]


def _handler(*, openai: bool, render: Render) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        outcome = await _embed(request, openai=openai)
        if isinstance(outcome, web.Response):
            return outcome
        return json_response(200, render(*outcome))

    return handle


def add_embed_routes(app: web.Application) -> None:
    app.router.add_post("/api/embed", _handler(openai=False, render=_ollama_body))
    app.router.add_post("/v1/embeddings", _handler(openai=True, render=_openai_body))
