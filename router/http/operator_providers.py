"""`GET /providers`: each cloud provider's keys, models, cooldowns and usage.

Key ids only (the environment variable's name, "#0" for a keyless provider), never the
keys; error messages are scrubbed as they are recorded (router/cloud/usage.py). The
document is rendered from the cloud health board and the usage ledger the serving path
keeps (router/cloud/targets.py); the same numbers are Prometheus metrics
(router/metrics.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["providers_route"]


def providers_route(view: Callable[[], dict[str, Any]]) -> routing.Route:
    """The `/providers` route over the cloud providers' `view`."""

    async def providers(_: Request) -> Response:
        return JSONResponse(view())

    return routing.Route("/providers", providers, methods=["GET"])
