"""Optional bearer keys for the router's HTTP API (a pure ASGI middleware).

With no keys configured every request passes. With keys, every path but the probes
(`/health`, `/ready`) needs `Authorization: Bearer <key>`; others get 401 in OpenAI's
error shape, which official clients turn into `AuthenticationError`. Keys are compared in
constant time and never logged.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from router.admission.tenants import bearer_token, key_matches

OPEN_PATHS = frozenset({"/health", "/ready"})


class RequireApiKey:
    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self._app = app
        self._keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if key_matches(bearer_token(headers.get(b"authorization", b"")), self._keys):
            await self._app(scope, receive, send)
            return
        message = "a valid API key is needed: Authorization: Bearer <key>"
        error: object = {
            "message": message,
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "param": None,
        }
        if scope["path"] == "/" or scope["path"].startswith("/api/"):
            error = message  # Ollama's shape on Ollama's paths
        response = JSONResponse(
            {"error": error}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)
