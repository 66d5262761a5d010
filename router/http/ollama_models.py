"""Ollama's routes that serve no job: the fleet's catalog and the probes clients make.

    GET  /api/tags                  every model of the fleet once (router/fleet/ollama_views.py)
    GET  /api/ps                    every loaded model, with the `node` that runs it
    POST /api/show                  a model's details from a node's runtime (kept a minute)
    GET  /api/version, GET|HEAD /   what Ollama clients probe ("Ollama is running")
    /api/pull, push, create, copy, delete, blobs: 501, the fleet's models live on its nodes
    any other /api/ path: 404 (405 for a known path asked with another method), by the
    template's error handlers in Ollama's shape (router/http/dialect.py)

`GET /` answers "Ollama is running" as plain text, which is what every Ollama client
probes; a browser (an `Accept` with `text/html`) is given the router's web page when one
is served (`page`), so both live at the same URL. Every error is Ollama's
`{"error": "..."}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from router.fleet.index import FleetIndex
from router.fleet.ollama_views import RunningView, TagsView
from router.http.edge import parse_json, read_body
from router.http.ollama import OLLAMA_ERRORS, ollama_error
from router.http.ollama_requests import served_name
from services.errors import ErrorCode, InferbusError

__all__ = [
    "MANAGED_ON_NODES",
    "OLLAMA_API_VERSION",
    "OLLAMA_RUNNING",
    "ShowModel",
    "no_show",
    "ollama_model_routes",
]

# The Ollama API version whose shapes the dialect answers (tools, structured outputs,
# thinking, logprobs); clients compare it to decide which fields they may send.
OLLAMA_API_VERSION = "0.12.11"
OLLAMA_RUNNING = "Ollama is running"
MANAGED_ON_NODES = (
    "the fleet does not manage models through the router: pull, create, copy, push and "
    "delete them on a node's own runtime (e.g. `ollama pull NAME` there); the router "
    "serves what the nodes serve (GET /api/tags)"
)
_MANAGEMENT = ("/api/pull", "/api/push", "/api/create", "/api/copy")
_SHOW_BODY_LIMIT = 64 * 1024

# A served model's details from a node (router/serving/model_show.py): (name, verbose,
# the node to ask first: the one whose record `/api/tags` shows).
ShowModel = Callable[[str, bool, str | None], Awaitable[dict[str, Any] | InferbusError]]
Page = Callable[[Request], Awaitable[Response]]


async def no_show(name: str, verbose: bool, first: str | None) -> dict[str, Any] | InferbusError:
    """`/api/show` where the router wired no way to ask nodes."""
    return InferbusError(ErrorCode.NO_ROUTE, "no node can be asked for a model's details")


def wants_page(accept: str) -> bool:
    """Whether an `Accept` header asks for HTML (a browser), not an API client's probe."""
    return "text/html" in accept.lower()


async def version(_: Request) -> Response:
    return JSONResponse({"version": OLLAMA_API_VERSION})


async def managed_on_nodes(_: Request) -> Response:
    return ollama_error(501, MANAGED_ON_NODES)


def ollama_model_routes(
    index: FleetIndex, catalog: TagsView, show_model: ShowModel, page: Page | None = None
) -> list[routing.BaseRoute]:
    """The catalog routes over the fleet `index` (`catalog`: its `/api/tags`, shared with
    the job routes); `show_model` asks a node; `page` is the web page browsers get at `/`
    (None: every client gets "Ollama is running")."""
    running_view = RunningView(index)

    async def root(request: Request) -> Response:
        if page is not None and wants_page(request.headers.get("accept", "")):
            return await page(request)
        return PlainTextResponse(OLLAMA_RUNNING)

    async def tags(_: Request) -> Response:
        return Response(catalog.body(), media_type="application/json")

    async def ps(_: Request) -> Response:
        return Response(running_view.body(), media_type="application/json")

    async def show(request: Request) -> Response:
        body = await read_body(request, _SHOW_BODY_LIMIT)
        raw = await parse_json(body) if not isinstance(body, InferbusError) else body
        if isinstance(raw, InferbusError):
            return OLLAMA_ERRORS.refusal(raw)
        name = (raw.get("model") or raw.get("name")) if isinstance(raw, dict) else None
        if not isinstance(name, str) or not name:
            return ollama_error(400, "model is required")
        name = served_name(name, lambda model: catalog.model(model) is not None)
        shown = await show_model(name, bool(raw.get("verbose")), catalog.describer(name))
        if isinstance(shown, InferbusError):
            if shown.code == ErrorCode.MODEL_NOT_FOUND:  # Ollama's own words
                return ollama_error(404, f"model '{name}' not found")
            return OLLAMA_ERRORS.refusal(shown)
        return JSONResponse(shown)

    return [
        routing.Route("/", root, methods=["GET"]),
        routing.Route("/api/version", version, methods=["GET"]),
        routing.Route("/api/tags", tags, methods=["GET"]),
        routing.Route("/api/ps", ps, methods=["GET"]),
        routing.Route("/api/show", show, methods=["POST"]),
        *(routing.Route(path, managed_on_nodes, methods=["POST"]) for path in _MANAGEMENT),
        routing.Route("/api/delete", managed_on_nodes, methods=["DELETE"]),
        routing.Route("/api/blobs/{digest}", managed_on_nodes, methods=["POST", "HEAD"]),
    ]
