"""Ollama's routes that serve jobs: `/api/chat`, `/api/generate` (NDJSON streams by
default, one object with `stream: false`), `/api/embed` and `/api/embeddings`.

Bodies become jobs in router/http/ollama_requests.py, answers take Ollama's shapes in
router/http/ollama_answers.py, and the job is served as every dialect's is: one call
through the idempotency gate and the dispatcher. A chat or generate with no input is
Ollama's way to load (or, with `keep_alive: 0`, unload) a model: it is answered at once
(`done_reason: load`/`unload`) when the fleet serves the model, since nodes load what
they serve; an embed of nothing answers no vectors, as Ollama does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.fleet.ollama_views import TagsView
from router.http.edge import Api, agent_of, retry_after_headers
from router.http.ollama_answers import (
    OllamaLines,
    chat_answer,
    embed_answer,
    embeddings_answer,
    generate_answer,
    load_answer,
    ollama_error,
    ollama_error_of,
)
from router.http.ollama_requests import (
    chat_fields,
    embed_fields,
    embeddings_fields,
    generate_fields,
    is_load_request,
    served_name,
)
from router.http.streams import stream_response
from services.errors import HTTP_STATUS, ErrorCode, InferbusError
from services.wire import JobResponse

__all__ = ["ollama_serving_routes"]

Shape = Callable[[dict[str, Any]], dict[str, Any] | InferbusError]
Whole = Callable[[JobResponse, Route, str, float], dict[str, Any]]
_UNLOAD = (0, "0", "0s", "0m")


def _failed(response: JobResponse, model: str | None) -> Response:
    assert response.error is not None
    error = InferbusError(response.error.code, response.error.message)
    answer = ollama_error_of(error, model)
    answer.headers.update(retry_after_headers(response))
    return answer


def _agent(request: Request) -> str | None:
    return agent_of(request.headers.get("x-agent-id"))


class _Serving:
    def __init__(self, api: Api, catalog: TagsView) -> None:
        self.api = api
        self.catalog = catalog  # which models the fleet serves, cached

    def _serves(self, name: str) -> bool:
        return self.catalog.model(name) is not None

    def _unknown_model(self, model: str) -> Response | None:
        if self._serves(model):
            return None
        message = f"model '{model}' not found"
        return ollama_error(HTTP_STATUS[ErrorCode.MODEL_NOT_FOUND], message)

    async def _fields(
        self, request: Request, label: str, started: float, shape: Shape
    ) -> tuple[dict[str, Any], dict[str, Any]] | Response:
        """(body, job fields), or the refusal already counted."""
        raw = await self.api.read_fields(request)
        fields = shape(raw) if not isinstance(raw, InferbusError) else raw
        if isinstance(fields, InferbusError):
            self.api.refused(label, started, fields)
            model = raw.get("model") if isinstance(raw, dict) else None
            return ollama_error_of(fields, model if isinstance(model, str) else None)
        assert isinstance(raw, dict)
        return raw, {**fields, "model": served_name(fields["model"], self._serves)}

    async def generation(self, request: Request, endpoint: str) -> Response:
        """`/api/chat` or `/api/generate`, streamed or whole."""
        label = f"ollama_{endpoint}"
        started = time.perf_counter()
        shape: Shape = chat_fields if endpoint == "chat" else generate_fields
        whole: Whole = chat_answer if endpoint == "chat" else generate_answer
        read = await self._fields(request, label, started, shape)
        if isinstance(read, Response):
            return read
        raw, fields = read
        if is_load_request(endpoint, raw):
            model = fields["model"]
            unload = raw.get("keep_alive") in _UNLOAD
            return self._unknown_model(model) or JSONResponse(
                load_answer(endpoint, model, unload=unload, now_unix=time.time())
            )
        job = await self.api.job_of(fields)
        if isinstance(job, InferbusError):
            self.api.refused(label, started, job)
            return ollama_error_of(job, fields["model"])
        model = job.model or ""
        call = self.api.call(request, job, _agent(request))
        if job.stream:
            return await stream_response(
                self.api.serve,
                call,
                OllamaLines(endpoint, model, time.time),
                on_error_before_first_token=lambda response, _route: _failed(response, model),
                on_finished=self.api.finished(label, started),
            )
        response, route = await self.api.serve(call)
        self.api.finished(label, started)(response, route)
        if response.error is not None:
            return _failed(response, model)
        return JSONResponse(whole(response, route, model, time.time()))

    async def embedding(self, request: Request, endpoint: str) -> Response:
        """`/api/embed` (one vector per input) or `/api/embeddings` (one vector)."""
        label = f"ollama_{endpoint}"
        started = time.perf_counter()
        shape: Shape = embed_fields if endpoint == "embed" else embeddings_fields
        read = await self._fields(request, label, started, shape)
        if isinstance(read, Response):
            return read
        _raw, fields = read
        if not fields["input"]:  # nothing to embed: no vectors, no runtime
            empty: dict[str, Any] = (
                {"embedding": []}
                if endpoint == "embeddings"
                else {"model": fields["model"], "embeddings": []}
            )
            return self._unknown_model(fields["model"]) or JSONResponse(empty)
        job = await self.api.job_of(fields)
        if isinstance(job, InferbusError):
            self.api.refused(label, started, job)
            return ollama_error_of(job, fields["model"])
        response, route = await self.api.serve(self.api.call(request, job, _agent(request)))
        self.api.finished(label, started)(response, route)
        if response.error is not None:
            return _failed(response, job.model)
        if endpoint == "embed":
            return JSONResponse(embed_answer(response, job.model or ""))
        return JSONResponse(embeddings_answer(response))


def ollama_serving_routes(api: Api, catalog: TagsView) -> list[routing.BaseRoute]:
    """The job routes; `catalog` says which models the fleet serves (shared with
    `/api/tags`)."""
    serving = _Serving(api, catalog)

    async def chat(request: Request) -> Response:
        return await serving.generation(request, "chat")

    async def generate(request: Request) -> Response:
        return await serving.generation(request, "generate")

    async def embed(request: Request) -> Response:
        return await serving.embedding(request, "embed")

    async def embeddings(request: Request) -> Response:
        return await serving.embedding(request, "embeddings")

    return [
        routing.Route("/api/chat", chat, methods=["POST"]),
        routing.Route("/api/generate", generate, methods=["POST"]),
        routing.Route("/api/embed", embed, methods=["POST"]),
        routing.Route("/api/embeddings", embeddings, methods=["POST"]),
    ]
