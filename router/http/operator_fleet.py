"""The operator's routes: `/nodes` (pages of the fleet), `/health`, `/ready`, `/metrics`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.fleet.view import FleetView
from router.fleet.views import NodesQuery, nodes_page
from services.errors import ErrorCode


@dataclass(frozen=True)
class FleetStatus:
    """What the operator's routes read (router/service.py wires it)."""

    fleet: FleetView
    breakers_of: Callable[[str, float], dict[str, str]]  # node, now → slot kind → status
    bus_connected: Callable[[], bool]
    has_local_runtime: bool
    registry: CollectorRegistry


def fleet_routes(status: FleetStatus) -> list[routing.BaseRoute]:
    fleet = status.fleet

    async def nodes(request: Request) -> Response:
        try:
            query = NodesQuery.of(request.query_params)
        except ValueError as error:
            return JSONResponse(
                {"error": {"code": ErrorCode.BAD_REQUEST.value, "message": str(error)}}, 400
            )
        now = fleet.clock()
        page = nodes_page(
            fleet.index, query, now=now, breakers_of=lambda node: status.breakers_of(node, now)
        )
        return JSONResponse(page)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        connected = status.bus_connected()
        routes = fleet.index.serves_anything() or status.has_local_runtime
        body = {"nats_connected": connected, "route_possible": routes}
        return JSONResponse(body, 200 if connected and routes else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(status.registry), media_type=CONTENT_TYPE_LATEST)

    return [
        routing.Route("/nodes", nodes, methods=["GET"]),
        routing.Route("/health", health, methods=["GET"]),
        routing.Route("/ready", ready, methods=["GET"]),
        routing.Route("/metrics", prometheus, methods=["GET"]),
    ]
