"""The Ollama dialect: the fleet answers Ollama's API as if it were one very large Ollama.

    POST /api/chat, /api/generate   NDJSON streams by default, one object with stream: false
    POST /api/embed, /api/embeddings
    GET  /api/tags                  every model of the fleet once (router/fleet/ollama_views.py)
    GET  /api/ps                    every loaded model, with the `node` that runs it
    POST /api/show                  a model's details from a node's runtime (kept a minute)
    GET  /api/version, GET|HEAD /   what Ollama clients probe ("Ollama is running")
    /api/pull, push, create, copy, delete, blobs: 501, the fleet's models live on its nodes

Bodies become jobs in router/http/ollama_requests.py, answers take Ollama's shapes in
router/http/ollama_answers.py; every error on an `/api/` path, unknown paths included, is
Ollama's `{"error": "..."}`. The dialect knows the one `infer` and the fleet's catalog,
nothing of NATS, nodes or breakers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from router.attempts.route import Route
from router.fleet.ollama_views import RunningView, TagsView
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
)
from router.http.streams import stream_response
from services.errors import HTTP_STATUS, ErrorCode, InferbusError
from services.wire import JobResponse

__all__ = ["OLLAMA_API_VERSION", "OLLAMA_RUNNING", "ollama_routes"]

# The Ollama API version whose shapes this dialect answers (tools, structured outputs,
# thinking, logprobs); clients compare it to decide which fields they may send.
OLLAMA_API_VERSION = "0.12.11"
OLLAMA_RUNNING = "Ollama is running"
MANAGED_ON_NODES = (
    "the fleet does not manage models through the router: pull, create, copy, push and "
    "delete them on a node's own runtime (e.g. `ollama pull NAME` there); the router "
    "serves what the nodes serve (GET /api/tags)"
)
_MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")
_KNOWN = frozenset(
    {
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/ps",
        "/api/show",
        "/api/version",
        *_MANAGEMENT,
    }
)

Shape = Callable[[dict[str, Any]], dict[str, Any] | InferbusError]
Whole = Callable[[JobResponse, Route, str, float], dict[str, Any]]


def _error_answer(response: JobResponse, model: str | None) -> Response:
    assert response.error is not None
    error = InferbusError(response.error.code, response.error.message)
    answer = ollama_error_of(error, model)
    answer.headers.update(retry_after_headers(response))
    return answer


def _caller(request: Request) -> str | None:
    return agent_of(request.headers.get("x-agent-id"))


class _Dialect:
    def __init__(self, api: Api) -> None:
        self.api = api
        index = api.router.fleet.index
        self.tags = TagsView(index)
        self.running = RunningView(index)

    async def _body(self, request: Request, label: str, started: float) -> Any:
        raw = await self.api.read_fields(request)
        if isinstance(raw, InferbusError):
            self.api.refused(label, started, raw)
        return raw

    def _unknown_model(self, model: str) -> Response | None:
        if self.tags.model(model) is not None:
            return None
        message = f"model '{model}' not found"
        return ollama_error(HTTP_STATUS[ErrorCode.MODEL_NOT_FOUND], message)

    async def generation(self, request: Request, endpoint: str) -> Response:
        """`/api/chat` or `/api/generate`, streamed or whole."""
        label = f"ollama_{endpoint}"
        started = time.perf_counter()
        raw = await self._body(request, label, started)
        if isinstance(raw, InferbusError):
            return ollama_error_of(raw)
        shape: Shape = chat_fields if endpoint == "chat" else generate_fields
        whole: Whole = chat_answer if endpoint == "chat" else generate_answer
        fields = shape(raw)
        if not isinstance(fields, InferbusError) and is_load_request(endpoint, raw):
            model = fields["model"]
            unload = raw.get("keep_alive") in (0, "0", "0s", "0m")
            return self._unknown_model(model) or JSONResponse(
                load_answer(endpoint, model, unload=unload, now_unix=time.time())
            )
        job = await self.api.job_of(fields) if not isinstance(fields, InferbusError) else fields
        if isinstance(job, InferbusError):
            self.api.refused(label, started, job)
            return ollama_error_of(job, raw.get("model"))
        model = job.model or ""
        if job.stream:
            lines = OllamaLines(endpoint, model, time.time)
            return await stream_response(
                lambda sink: self.api.infer(
                    request, job, agent_id=_caller(request), on_delta=sink, on_model=lines.use_model
                ),
                lines,
                on_error_before_first_token=lambda response, _route: _error_answer(response, model),
                on_finished=self.api.finished(label, started),
            )
        response, route = await self.api.infer(request, job, agent_id=_caller(request))
        self.api.finished(label, started)(response, route)
        if response.error is not None:
            return _error_answer(response, model)
        return JSONResponse(whole(response, route, model, time.time()))

    async def embedding(self, request: Request, endpoint: str) -> Response:
        """`/api/embed` (one vector per input) or `/api/embeddings` (one vector)."""
        label = f"ollama_{endpoint}"
        started = time.perf_counter()
        raw = await self._body(request, label, started)
        if isinstance(raw, InferbusError):
            return ollama_error_of(raw)
        shape: Shape = embed_fields if endpoint == "embed" else embeddings_fields
        fields = shape(raw)
        if not isinstance(fields, InferbusError) and not fields["input"]:
            # Ollama answers an empty input with no vectors, without the runtime.
            unknown = self._unknown_model(fields["model"])
            empty = {"embedding": []} if endpoint == "embeddings" else _no_vectors(fields)
            return unknown or JSONResponse(empty)
        job = await self.api.job_of(fields) if not isinstance(fields, InferbusError) else fields
        if isinstance(job, InferbusError):
            self.api.refused(label, started, job)
            return ollama_error_of(job, raw.get("model"))
        response, route = await self.api.infer(request, job, agent_id=_caller(request))
        self.api.finished(label, started)(response, route)
        if response.error is not None:
            return _error_answer(response, job.model)
        if endpoint == "embed":
            return JSONResponse(embed_answer(response, job.model or ""))
        return JSONResponse(embeddings_answer(response))

    async def show(self, request: Request) -> Response:
        raw = await self.api.read_fields(request)
        if isinstance(raw, InferbusError):
            return ollama_error_of(raw)
        name = raw.get("model") or raw.get("name")
        if not isinstance(name, str) or not name:
            return ollama_error(400, "model is required")
        shown = await self.api.router.shows.show(name, verbose=bool(raw.get("verbose")))
        if isinstance(shown, InferbusError):
            return ollama_error_of(shown, name)
        return JSONResponse(shown)


def _no_vectors(fields: dict[str, Any]) -> dict[str, Any]:
    return {"model": fields["model"], "embeddings": []}


async def ollama_running(_: Request) -> Response:
    """`GET /` and `HEAD /`: what Ollama clients probe to see a server is there."""
    return PlainTextResponse(OLLAMA_RUNNING)


async def version(_: Request) -> Response:
    return JSONResponse({"version": OLLAMA_API_VERSION})


async def managed_on_nodes(_: Request) -> Response:
    return ollama_error(501, MANAGED_ON_NODES)


async def unknown_path(request: Request) -> Response:
    """Every other `/api/` path, and known ones asked with the wrong method."""
    path = request.url.path
    if path in _KNOWN or path.startswith("/api/blobs/"):
        return ollama_error(405, f"{request.method} is not allowed on {path}")
    return ollama_error(404, f"no route {request.method} {path}")


def ollama_routes(api: Api) -> list[routing.BaseRoute]:
    dialect = _Dialect(api)

    async def chat(request: Request) -> Response:
        return await dialect.generation(request, "chat")

    async def generate(request: Request) -> Response:
        return await dialect.generation(request, "generate")

    async def embed(request: Request) -> Response:
        return await dialect.embedding(request, "embed")

    async def embeddings(request: Request) -> Response:
        return await dialect.embedding(request, "embeddings")

    async def tags(_: Request) -> Response:
        return Response(dialect.tags.body(), media_type="application/json")

    async def ps(_: Request) -> Response:
        return Response(dialect.running.body(), media_type="application/json")

    any_method = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return [
        routing.Route("/", ollama_running, methods=["GET"]),
        routing.Route("/api/version", version, methods=["GET"]),
        routing.Route("/api/tags", tags, methods=["GET"]),
        routing.Route("/api/ps", ps, methods=["GET"]),
        routing.Route("/api/show", dialect.show, methods=["POST"]),
        routing.Route("/api/chat", chat, methods=["POST"]),
        routing.Route("/api/generate", generate, methods=["POST"]),
        routing.Route("/api/embed", embed, methods=["POST"]),
        routing.Route("/api/embeddings", embeddings, methods=["POST"]),
        *(routing.Route(path, managed_on_nodes, methods=["POST"]) for path in _MANAGEMENT[:4]),
        routing.Route("/api/delete", managed_on_nodes, methods=["DELETE"]),
        routing.Route("/api/blobs/{digest}", managed_on_nodes, methods=["POST", "HEAD"]),
        routing.Route("/api/{rest:path}", unknown_path, methods=any_method),
    ]
