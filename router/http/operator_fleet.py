"""The operator's routes: `/nodes` (pages of the fleet), `/health`, `/ready`, `/metrics`."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.fleet.views import NodesQuery, nodes_page
from router.http.edge import Api
from services.errors import ErrorCode


def fleet_routes(api: Api) -> list[routing.BaseRoute]:
    router = api.router

    async def nodes(request: Request) -> Response:
        try:
            query = NodesQuery.of(request.query_params)
        except ValueError as error:
            return JSONResponse(
                {"error": {"code": ErrorCode.BAD_REQUEST.value, "message": str(error)}}, 400
            )
        now = router.fleet.clock()
        page = nodes_page(
            router.fleet.index,
            query,
            now=now,
            breakers_of=lambda node: router.health.breakers_of(node, now),
        )
        return JSONResponse(page)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        connected = router.connected()
        routes = router.fleet.index.serves_anything() or router.local is not None
        body = {"nats_connected": connected, "route_possible": routes}
        return JSONResponse(body, 200 if connected and routes else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return [
        routing.Route("/nodes", nodes, methods=["GET"]),
        routing.Route("/health", health, methods=["GET"]),
        routing.Route("/ready", ready, methods=["GET"]),
        routing.Route("/metrics", prometheus, methods=["GET"]),
    ]
