"""The live page at `/ui/`: the HTML, its one script and style sheet, its event stream, login.

    GET  /ui/          the page (a login first when `http.api_keys` is set)
    GET  /ui/events    the feed as server-sent events (router/http/live/feed.py)
    GET  /ui/login     the login form; POST it with `key` to get a session cookie
    POST /ui/logout    ends the session
    GET  /ui/app.js, /ui/style.css   the page's script and styles (no secrets: open)

`GET /` answers browsers only: a request that accepts `text/html` is sent to `ui/`;
every other `GET /` (Ollama clients probe it) goes on to the API as before.

Every URL the page and these answers use is relative (`ui/`, `events`, `login`), so the
page works unchanged behind a reverse proxy that serves the router under a path prefix.
With keys, the page and its stream take either `Authorization: Bearer <key>` (scripts)
or the session cookie the login form sets (router/http/live/session.py); the key itself
is never sent back, and nothing the page receives carries a prompt, an answer or a key.
"""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from urllib.parse import parse_qs

from starlette import routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from router.admission.tenants import TenantDirectory
from router.http.live.feed import LiveFeed, event
from router.http.live.session import COOKIE, SESSION_S, new_session, session_tenant

__all__ = ["PageAccess", "with_page"]

_MAX_LOGIN_BYTES = 4096
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}


def _asset(name: str) -> bytes:
    return (resources.files("router.http.live") / "static" / name).read_bytes()


class PageAccess:
    """Who may see the page: anyone without keys; with keys, a tenant's key (as the API
    takes it: `Authorization: Bearer`, `x-api-key`) or a session the login form made."""

    def __init__(
        self,
        directory: Callable[[], TenantDirectory],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._directory = directory
        self._secret = secrets.token_bytes(32)
        self._clock = clock

    @property
    def open(self) -> bool:
        return not self._directory().keys_configured

    def allows(self, request: Request) -> bool:
        directory = self._directory()
        if not directory.keys_configured:
            return True
        headers = request.headers
        presented = (headers.get("authorization", ""), headers.get("x-api-key", ""))
        if directory.identify(presented[0].encode(), presented[1].encode()) is not None:
            return True
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and self._session_of(cookie, directory) is not None

    def _session_of(self, cookie: str, directory: TenantDirectory) -> str | None:
        def scope_of(name: str) -> str | None:
            tenant = directory.tenants.get(name)
            return tenant.scope if tenant is not None else None

        return session_tenant(self._secret, cookie, scope_of, now=self._clock())

    def session_for(self, key: str) -> str | None:
        """A session cookie value when `key` is a tenant's key, else None."""
        directory = self._directory()
        tenant = directory.identify(b"", key.strip().encode())
        if tenant is None or not directory.keys_configured:
            return None
        return new_session(self._secret, tenant.name, tenant.scope, now=self._clock())


def _login_page(message: str, status: int) -> Response:
    page = _asset("login.html").decode().replace("{message}", html.escape(message))
    return Response(page, status, media_type="text/html", headers=_PAGE_HEADERS)


def _secure(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


async def _form_key(request: Request) -> str | None:
    """The `key` field of a posted login form ("" when absent), None when it is too big."""
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > _MAX_LOGIN_BYTES:
            return None
    return parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]


def page_routes(feed: LiveFeed, access: PageAccess) -> list[routing.BaseRoute]:
    async def to_page(_: Request) -> Response:
        return RedirectResponse("ui/", 303)

    async def page(request: Request) -> Response:
        if not access.allows(request):
            return RedirectResponse("login", 303)
        return Response(_asset("index.html"), media_type="text/html", headers=_PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        return Response(
            _asset(name), media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"}
        )

    async def events(request: Request) -> Response:
        if not access.allows(request):
            body = {"error": {"code": "UNAUTHORIZED", "message": "log in at ui/login"}}
            return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
        viewer = feed.watch()
        hello = event("hello", {"login": not access.open})

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield hello
                async for data in viewer.events():
                    yield data
            finally:
                feed.leave(viewer)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def login_form(request: Request) -> Response:
        if access.open or access.allows(request):
            return RedirectResponse("./", 303)
        return _login_page("", 200)

    async def login(request: Request) -> Response:
        key = await _form_key(request)
        if key is None:
            return _login_page("That is not a key.", 413)
        session = access.session_for(key) if key else None
        if session is None:
            return _login_page("Wrong key.", 401)
        response = RedirectResponse("./", 303)
        response.set_cookie(
            COOKIE,
            session,
            max_age=SESSION_S,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        return response

    async def logout(_: Request) -> Response:
        response = RedirectResponse("login", 303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response

    return [
        routing.Route("/ui", to_page, methods=["GET"]),
        routing.Route("/ui/", page, methods=["GET"]),
        routing.Route("/ui/events", events, methods=["GET"]),
        routing.Route("/ui/login", login_form, methods=["GET"]),
        routing.Route("/ui/login", login, methods=["POST"]),
        routing.Route("/ui/logout", logout, methods=["POST"]),
        routing.Route("/ui/{name:str}", asset, methods=["GET"]),
    ]


def _accepts_html(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            return b"text/html" in value
    return False


def with_page(api: ASGIApp, feed: LiveFeed, access: PageAccess) -> ASGIApp:
    """The API app with the page beside it: `/ui...` to the page, a browser's `GET /` to
    `ui/`, everything else to `api` (which applies its own keys)."""
    routes = page_routes(feed, access)
    page_app = Starlette(routes=routes)
    assets = frozenset(_ASSETS)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path == "/ui" or path.startswith("/ui/"):
                name = path[4:]
                if "/" in name or (name not in assets and name not in _PAGE_PATHS):
                    await JSONResponse(_not_found(path), 404)(scope, receive, send)
                    return
                await page_app(scope, receive, send)
                return
            if path == "/" and scope["method"] in ("GET", "HEAD") and _accepts_html(scope):
                await RedirectResponse("ui/", 303)(scope, receive, send)
                return
        await api(scope, receive, send)

    return app


_PAGE_PATHS = frozenset({"", "events", "login", "logout"})


def _not_found(path: str) -> dict[str, object]:
    return {"error": {"code": "NOT_FOUND", "message": f"no page at {path}"}}
