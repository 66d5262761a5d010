"""The operator's write route: `POST /admin/reload` re-reads the router's config.

Only a tenant marked `admin: true` may call it (403 otherwise, 401 without a key when
keys are configured). The answer says what was applied and what needs a restart, or why
the file was refused (400: the running config stays).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette import routing
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.admission.tenants import Tenant
from services.errors import ErrorCode

Reload = Callable[[], Awaitable[dict[str, Any]]]


def admin_routes(reload: Reload) -> list[routing.BaseRoute]:
    async def reload_config(request: Request) -> Response:
        tenant: Tenant | None = getattr(request.state, "tenant", None)
        if tenant is None or not tenant.admin:
            error = {
                "message": "only a tenant with `admin: true` may reload the config",
                "type": "invalid_request_error",
                "code": "forbidden",
                "param": None,
            }
            return JSONResponse({"error": error}, status_code=403)
        report = await reload()
        if not report.get("reloaded"):
            error = {"code": ErrorCode.BAD_REQUEST.value, "message": report.get("error", "")}
            return JSONResponse({"reloaded": False, "error": error}, status_code=400)
        return JSONResponse(report)

    return [routing.Route("/admin/reload", reload_config, methods=["POST"])]
