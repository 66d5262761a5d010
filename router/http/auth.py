"""Who is asking, for the router's HTTP API (a pure ASGI middleware).

With no keys configured every request passes as the one anonymous tenant. With keys,
every path but the probes (`/health`, `/ready`) needs `Authorization: Bearer <key>` of a
configured tenant; others get 401 in OpenAI's error shape, which official clients turn
into `AuthenticationError`. The tenant found is left in the request's state
(`request.state.tenant`). The directory is asked per request, so a reload that removes
a key refuses it from the next request on. Keys are compared in constant time and never
logged.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from router.admission.tenants import TenantDirectory

OPEN_PATHS = frozenset({"/health", "/ready"})


class RequireApiKey:
    def __init__(self, app: ASGIApp, directory: Callable[[], TenantDirectory]) -> None:
        self._app = app
        self._directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        tenant = self._directory().identify(headers.get(b"authorization", b""))
        if tenant is not None or scope["path"] in OPEN_PATHS:
            scope.setdefault("state", {})["tenant"] = tenant
            await self._app(scope, receive, send)
            return
        error = {
            "message": "a valid API key is needed: Authorization: Bearer <key>",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "param": None,
        }
        response = JSONResponse(
            {"error": error}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)
