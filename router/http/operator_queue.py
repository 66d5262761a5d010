"""The line as the operator and the caller see it: `GET /queue` and `x-inferbus-queue-ms`.

`GET /queue` lists the calls waiting for a slot, oldest first: tenant, class, model,
type and age; never their content. Every answer of a call that went through the line
carries `x-inferbus-queue-ms`, the time it waited (0 when it started at once).
"""

from __future__ import annotations

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.admission.line import Admission

QUEUE_HEADER = b"x-inferbus-queue-ms"


def queue_route(admission: Admission) -> routing.BaseRoute:
    async def queue(request: Request) -> Response:
        waiting = admission.snapshot()
        return JSONResponse({"total": len(waiting), "waiting": waiting[:1000]})

    return routing.Route("/queue", queue, methods=["GET"])


class QueueTimeHeader:
    """Adds `x-inferbus-queue-ms` to an answer whose call went through the line (a pure
    ASGI middleware: the line leaves the time in the request's state when the call
    starts, before any answer's headers go out)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_queue_time(message: Message) -> None:
            if message["type"] == "http.response.start":
                queue_ms = scope.get("state", {}).get("queue_ms")
                if queue_ms is not None:
                    headers = list(message.get("headers", []))
                    headers.append((QUEUE_HEADER, str(round(queue_ms)).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_with_queue_time)
