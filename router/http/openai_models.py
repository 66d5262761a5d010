"""OpenAI's Models dialect: `GET /v1/models` (the fleet's models, each with its `type`
and `capabilities`) and `GET /v1/models/{id}` (one model; 404 in OpenAI's error shape when
no fresh node serves it, so `client.models.retrieve` raises NotFoundError)."""

from __future__ import annotations

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.fleet.index import FleetIndex
from router.fleet.views import ModelsView
from router.http.openai import openai_error
from services.errors import ErrorCode


def models_routes(index: FleetIndex) -> list[routing.BaseRoute]:
    view = ModelsView(index)

    async def models(_: Request) -> Response:
        return Response(view.body(), media_type="application/json")

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        entry = view.entry(name)
        if entry is None:
            message = f"the model {name!r} does not exist: no node serves it"
            return openai_error(ErrorCode.MODEL_NOT_FOUND, message, 404, "model")
        return JSONResponse(entry)

    return [
        routing.Route("/v1/models", models, methods=["GET"]),
        # `{model:path}`: model names carry slashes (hf.co/org/model:tag).
        routing.Route("/v1/models/{model:path}", model, methods=["GET"]),
    ]
