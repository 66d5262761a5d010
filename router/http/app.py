"""The router's HTTP API (Starlette): the API dialects, written on one template, and the
plain routes beside them.

    router/http/dialect.py             the template (`Dialect`, `dialect_route`) and how
                                       to add a dialect
    router/http/edge.py                what every dialect shares (body limits, JSON,
                                       images, the call, the gate, metrics): `Api`
    router/http/native.py              POST /infer (DESIGN §3 JobRequest / JobResponse)
    router/http/openai_chat.py         POST /v1/chat/completions
    router/http/openai_embeddings.py   POST /v1/embeddings
    router/http/openai_completions.py  POST /v1/completions (legacy)
    router/http/openai_models.py       GET  /v1/models, /v1/models/{id}
    router/http/responses.py           POST /v1/responses (OpenAI's Responses, stateless)
    router/http/ollama_chat.py         POST /api/chat, /api/generate (Ollama)
    router/http/ollama_embed.py        POST /api/embed, /api/embeddings (Ollama)
    router/http/ollama_models.py       GET  /api/tags, /api/ps, /api/version, POST /api/show,
                                       "Ollama is running" at /, 501 for model management
    router/http/anthropic.py           POST /v1/messages, /v1/messages/count_tokens
    router/http/operator_fleet.py      GET  /nodes, /health, /ready, /metrics
    router/http/operator_providers.py  GET  /providers
    router/http/operator_queue.py      GET  /queue, the x-inferbus-queue-ms header
    router/http/operator_admin.py      POST /admin/reload (an admin tenant)
    router/http/live/                  GET  /ui/ the live page, its event stream, its login

Every answer says how it was served (`route`). Errors use DESIGN §3's HTTP statuses in
the error body of the path's dialect: OpenAI's under `/v1/` (router/http/openai.py), so
official clients raise the right exception class; Ollama's under `/api/`
(router/http/ollama.py); Anthropic's under `/v1/messages` (router/http/anthropic.py);
unknown paths and methods included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette import routing
from starlette.applications import Starlette
from starlette.types import ASGIApp

from router.fleet.ollama_views import TagsView
from router.http.anthropic import AnthropicMessages, CountTokens
from router.http.auth import RequireApiKey
from router.http.dialect import (
    Dialect,
    DialectPaths,
    ErrorShape,
    dialect_endpoint,
    dialect_route,
    error_handlers,
)
from router.http.edge import Api
from router.http.live.feed import LiveFeed
from router.http.live.routes import PageAccess, with_page
from router.http.native import Native
from router.http.ollama import OLLAMA_ERRORS
from router.http.ollama_chat import OllamaChat, OllamaGenerate
from router.http.ollama_embed import OllamaEmbed, OllamaEmbeddings
from router.http.ollama_models import ShowModel, no_show, ollama_model_routes
from router.http.openai import OPENAI_ERRORS
from router.http.openai_chat import ChatCompletions
from router.http.openai_completions import Completions
from router.http.openai_embeddings import Embeddings
from router.http.openai_models import models_routes
from router.http.operator_admin import Reload, admin_routes
from router.http.operator_fleet import FleetStatus, fleet_routes
from router.http.operator_providers import providers_route
from router.http.operator_queue import QueueTimeHeader, queue_route
from router.http.responses import Responses

# The dialects, one a line; a new dialect adds its line here (router/http/dialect.py).
DIALECTS: tuple[Dialect, ...] = (
    Native(),
    ChatCompletions(),
    Embeddings(),
    Completions(),
    Responses(),
    AnthropicMessages(),
    CountTokens(),
)
# The error shapes of path prefixes whose routes are not all dialects.
PREFIX_ERRORS: tuple[ErrorShape, ...] = (OPENAI_ERRORS, OLLAMA_ERRORS)


def ollama_dialects(catalog: TagsView) -> tuple[Dialect, ...]:
    """Ollama's job dialects; they name models as the fleet's `catalog` serves them."""

    def serves(name: str) -> bool:
        return catalog.model(name) is not None

    return (
        OllamaChat(serves),
        OllamaGenerate(serves),
        OllamaEmbed(serves),
        OllamaEmbeddings(serves),
    )


def build_app(
    api: Api,
    status: FleetStatus,
    providers_view: Callable[[], dict[str, Any]],
    reload: Reload | None = None,
    cloud_models: Mapping[str, str] | None = None,
    show_model: ShowModel = no_show,
    live: LiveFeed | None = None,
) -> ASGIApp:
    """The HTTP API over what router/service.py wired: the dialects' `api`, the fleet's
    `status` for the operator's routes, the cloud providers' `providers_view` and the
    models they serve (`cloud_models`, name → provider), `show_model` (a model's details
    from a node that serves it) for Ollama's `/api/show`; with `live`, the live page
    beside them (`/ui/`)."""
    ollama_catalog = TagsView(status.fleet.index)  # Ollama's /api/tags, and what it serves
    dialects = (*DIALECTS, *ollama_dialects(ollama_catalog))
    routes: list[routing.BaseRoute] = [
        *(dialect_route(api, dialect) for dialect in dialects),
        *models_routes(status.fleet.index, cloud_models or {}),
        *ollama_model_routes(status.fleet.index, ollama_catalog, show_model),
        *fleet_routes(status),
        providers_route(providers_view),
        *([queue_route(api.line)] if api.line is not None else []),
        *(admin_routes(reload) if reload is not None else []),
    ]
    shapes = [*PREFIX_ERRORS, *(dialect.errors for dialect in dialects)]
    starlette = Starlette(routes=routes, exception_handlers=error_handlers(shapes))
    endpoints = {dialect.path: dialect_endpoint(api, dialect) for dialect in dialects}
    app = DialectPaths(starlette, endpoints)
    line = api.line
    if line is None:
        return QueueTimeHeader(app)
    keyed = RequireApiKey(QueueTimeHeader(app), lambda: line.directory)
    if live is None:
        return keyed
    return with_page(keyed, live, PageAccess(lambda: line.directory))
