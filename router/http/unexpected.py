"""An unexpected error (a bug) still gets one answer in the dialect of its path.

Starlette answers an exception nobody caught with a plain-text 500, which no client of
any dialect can read. Here the 500 is INTERNAL in the error body of the path's dialect
(`unexpected_error`, Starlette's handler for `Exception`), and the exception is logged
with its stack once, by `LogUnexpected`, which swallows Starlette's re-raise so the
server does not log it a second time. A stream that breaks after its first byte cannot
change its status any more: the client sees the stream end, and the log says why.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("inferbus.router")

INTERNAL_MESSAGE = "the router failed unexpectedly on this request; it is logged"


def internal_error_body(path: str) -> dict[str, object]:
    """INTERNAL in the error shape of the dialect that owns `path`."""
    if path.startswith("/v1/messages"):
        return {"type": "error", "error": {"type": "api_error", "message": INTERNAL_MESSAGE}}
    if path.startswith("/api/"):
        return {"error": INTERNAL_MESSAGE}
    if path.startswith("/v1/"):
        error = {"message": INTERNAL_MESSAGE, "type": "api_error", "code": "INTERNAL"}
        return {"error": error | {"param": None}}
    return {
        "job_id": "",
        "status": "error",
        "error": {"code": "INTERNAL", "message": INTERNAL_MESSAGE, "retryable": False},
    }


async def unexpected_error(request: Request, _exc: Exception) -> JSONResponse:
    return JSONResponse(internal_error_body(request.url.path), status_code=500)


class LogUnexpected:
    """Logs an exception that escaped the app, once, with its stack; never re-raises it
    (the answer, when one could still be sent, was sent by `unexpected_error`)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        try:
            await self._app(scope, receive, send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
