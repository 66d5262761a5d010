"""The router's HTTP API (Starlette): one module per API dialect over one shared `infer`.

    router/http/edge.py        what every dialect shares (body limits, JSON, images,
                               the idempotency gate, metrics): `Api`
    router/http/native.py       POST /infer (DESIGN §3 JobRequest / JobResponse)
    router/http/openai_chat.py         POST /v1/chat/completions
    router/http/openai_embeddings.py   POST /v1/embeddings
    router/http/openai_completions.py  POST /v1/completions (legacy)
    router/http/openai_models.py       GET  /v1/models, /v1/models/{id}
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

from router.http.auth import RequireApiKey
from router.http.edge import Api
from router.http.native import native_routes
from router.http.openai import method_not_allowed, not_found
from router.http.openai_chat import chat_routes
from router.http.openai_completions import completions_routes
from router.http.openai_embeddings import embeddings_routes
from router.http.openai_models import models_routes
from router.http.operator_fleet import FleetStatus, fleet_routes
from router.http.operator_providers import providers_route


def build_app(
    api: Api, status: FleetStatus, providers_view: Callable[[], dict[str, Any]]
) -> ASGIApp:
    """The HTTP API over what router/service.py wired: the dialects' `api`, the fleet's
    `status` for the operator's routes, the cloud providers' `providers_view`."""
    # The routes, one dialect (or operator group) a line; a new dialect adds its line here.
    routes: list[routing.BaseRoute] = [
        *native_routes(api),
        *chat_routes(api),
        *embeddings_routes(api),
        *completions_routes(api),
        *models_routes(status.fleet.index),
        *fleet_routes(status),
        providers_route(providers_view),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    keys = [key.get_secret_value() for key in api.http.api_keys]
    return RequireApiKey(app, keys) if keys else app
