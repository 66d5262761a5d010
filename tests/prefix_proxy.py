"""A reverse proxy on loopback serving one upstream under a path prefix, as nginx's
`location /fleet/ { proxy_pass http://router/; }` does: the prefix is cut off on the way
in, headers pass both ways as they are (a relative `Location` is left relative, cookies
as set), and answers stream through (server-sent events arrive as they are sent).
"""

from __future__ import annotations

import contextlib

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from services.lifecycle import AsyncService

# Hop-by-hop headers (RFC 9110 7.6.1), and the ones the proxy's own connections set.
_NOT_PASSED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
)


class PrefixProxy(AsyncService):
    def __init__(self, upstream: str, prefix: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.prefix = "/" + prefix.strip("/")
        self.url = ""  # the proxy's origin: the upstream is at url + prefix + "/"
        self.paths: list[str] = []  # every path asked of the proxy, in order
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", self.prefix + "/{rest:.*}", self._forward)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.paths.append(request.path)
        target = f"{self.upstream}/{request.match_info['rest']}"
        if request.query_string:
            target += "?" + request.query_string
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _NOT_PASSED
        )
        async with self._session.request(
            request.method,
            target,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            passed = CIMultiDict(
                (k, v) for k, v in answer.headers.items() if k.lower() not in _NOT_PASSED
            )
            response = web.StreamResponse(status=answer.status, headers=passed)
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):  # the browser went away
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
        return response

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
