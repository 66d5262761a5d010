"""OpenAI's Models dialect: `GET /v1/models` (the fleet's models, each with its `type`
and `capabilities`, then the models the configured cloud providers serve, `owned_by` the
provider) and `GET /v1/models/{id}` (one model; 404 in OpenAI's error shape when neither
a fresh node nor a provider serves it, so `client.models.retrieve` raises NotFoundError)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.fleet.index import FleetIndex
from router.fleet.views import ModelsView
from router.http.openai import openai_error
from services.errors import ErrorCode


def cloud_model_entries(cloud_models: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The providers' models (name → provider) as OpenAI model entries, `owned_by` the
    provider."""
    return {
        name: {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": provider,
            "type": "llm",
            "capabilities": ["completion"],
        }
        for name, provider in cloud_models.items()
    }


def models_routes(index: FleetIndex, cloud_models: Mapping[str, str]) -> list[routing.BaseRoute]:
    view = ModelsView(index)
    cloud = cloud_model_entries(cloud_models)

    async def models(_: Request) -> Response:
        if not cloud:
            return Response(view.body(), media_type="application/json")
        fleet: list[dict[str, Any]] = json.loads(view.body())["data"]
        served = {entry["id"] for entry in fleet}
        more = [entry for name, entry in cloud.items() if name not in served]
        return JSONResponse({"object": "list", "data": [*fleet, *more]})

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        entry = view.entry(name) or cloud.get(name)
        if entry is None:
            message = f"the model {name!r} does not exist: no node or provider serves it"
            return openai_error(ErrorCode.MODEL_NOT_FOUND, message, 404, "model")
        return JSONResponse(entry)

    return [
        routing.Route("/v1/models", models, methods=["GET"]),
        # `{model:path}`: model names carry slashes (hf.co/org/model:tag).
        routing.Route("/v1/models/{model:path}", model, methods=["GET"]),
    ]
