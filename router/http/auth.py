"""Who is asking, for the router's HTTP API (a pure ASGI middleware).

With no keys configured every request passes as the one anonymous tenant. With keys,
every path but the probes (`/health`, `/ready`) needs the key of a configured tenant in
`Authorization: Bearer <key>` or `x-api-key: <key>` (what Anthropic's clients send);
others get 401 in the error shape of the path's API (OpenAI's, Anthropic's under
`/v1/messages`, Ollama's under `/api/` and at `/`), which official clients turn into
their authentication error. The tenant
found is left in the request's state (`request.state.tenant`). The directory is asked per
request, so a reload that removes a key refuses it from the next request on. Keys are
compared in constant time and never logged.
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
        directory = self._directory()
        tenant = directory.anonymous  # no keys configured: whoever asks
        if tenant is None:
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization", b"")
            tenant = directory.identify(authorization, headers.get(b"x-api-key", b""))
        if tenant is not None or scope["path"] in OPEN_PATHS:
            scope.setdefault("state", {})["tenant"] = tenant
            await self._app(scope, receive, send)
            return
        response = JSONResponse(
            unauthorized_body(scope["path"]),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


NEEDED = "a valid API key is needed: Authorization: Bearer <key> or x-api-key: <key>"


def unauthorized_body(path: str) -> dict[str, object]:
    """The 401 body in the error shape of the API the path belongs to."""
    if path.startswith("/v1/messages"):
        return {"type": "error", "error": {"type": "authentication_error", "message": NEEDED}}
    if path == "/" or path.startswith("/api/"):  # Ollama's
        return {"error": NEEDED}
    error = {"message": NEEDED, "type": "invalid_request_error", "code": "invalid_api_key"}
    return {"error": error | {"param": None}}
