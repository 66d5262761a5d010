"""The router's HTTP API (Starlette): one module per API dialect over one shared `infer`.

    router/http/edge.py        what every dialect shares (body limits, JSON, images,
                               the idempotency gate, metrics): `Api`
    router/http/native.py       POST /infer (DESIGN §3 JobRequest / JobResponse)
    router/http/openai_chat.py         POST /v1/chat/completions
    router/http/openai_embeddings.py   POST /v1/embeddings
    router/http/openai_completions.py  POST /v1/completions (legacy)
    router/http/openai_models.py       GET  /v1/models, /v1/models/{id}
    router/http/ollama_chat.py         POST /api/chat, /api/generate, /api/embed(dings)
    router/http/ollama_models.py       GET  /api/tags, /api/ps, /api/version, POST /api/show,
                                       "Ollama is running" at /, 501 for model management
    router/http/operator_fleet.py        GET  /nodes, /health, /ready, /metrics

Every answer says how it was served (`route`). Errors use DESIGN §3's HTTP statuses; the
OpenAI routes wrap them in OpenAI's error body (router/http/openai.py), unknown `/v1/`
paths included, so official clients raise the right exception class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette import routing
from starlette.applications import Starlette
from starlette.types import ASGIApp

from router.fleet.ollama_views import TagsView
from router.http.auth import RequireApiKey
from router.http.edge import Api
from router.http.native import native_routes
from router.http.ollama_chat import ollama_serving_routes
from router.http.ollama_models import ShowModel, ollama_model_routes, ollama_unknown_route
from router.http.openai import method_not_allowed, not_found
from router.http.openai_chat import chat_routes
from router.http.openai_completions import completions_routes
from router.http.openai_embeddings import embeddings_routes
from router.http.openai_models import models_routes
from router.http.operator_fleet import FleetStatus, fleet_routes
from router.http.operator_providers import providers_route


def build_app(
    api: Api,
    status: FleetStatus,
    providers_view: Callable[[], dict[str, Any]],
    show_model: ShowModel,
) -> ASGIApp:
    """The HTTP API over what router/service.py wired: the dialects' `api`, the fleet's
    `status` for the operator's routes, the cloud providers' `providers_view`, and
    `show_model` (a model's details from a node) for Ollama's `/api/show`."""
    ollama_catalog = TagsView(status.fleet.index)  # Ollama's /api/tags, and what it serves
    # The routes, one dialect (or operator group) a line; a new dialect adds its line here.
    routes: list[routing.BaseRoute] = [
        *native_routes(api),
        *chat_routes(api),
        *embeddings_routes(api),
        *completions_routes(api),
        *models_routes(status.fleet.index),
        *ollama_serving_routes(api, ollama_catalog),
        *ollama_model_routes(status.fleet.index, ollama_catalog, show_model),
        *fleet_routes(status),
        providers_route(providers_view),
        ollama_unknown_route(),  # last: every other /api/ path
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    keys = [key.get_secret_value() for key in api.http.api_keys]
    return RequireApiKey(app, keys) if keys else app
