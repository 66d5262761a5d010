"""A real HTTP server on loopback that serves images (and worse) to image-URL tests."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from services.localnet import free_port
from tests.test_worker_jobs import TINY_PNG

PNG = base64.b64decode(TINY_PNG)


@dataclass
class ImageServer:
    port: int
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@asynccontextmanager
async def image_server(big_bytes: int = 64 * 1024) -> AsyncIterator[ImageServer]:
    """/cat.png an image; /redirect a 302 to it; /big a PNG over `big_bytes`; /page HTML;
    /slow an image after 30 s. Every request is counted in `hits` by path."""
    server = ImageServer(free_port())

    async def serve(request: web.Request) -> web.StreamResponse:
        server.hits[request.path] += 1
        if request.path == "/cat.png":
            return web.Response(body=PNG, content_type="image/png")
        if request.path == "/redirect":
            raise web.HTTPFound("/cat.png")
        if request.path == "/big":
            return web.Response(body=PNG + b"\0" * big_bytes, content_type="image/png")
        if request.path == "/slow":
            await asyncio.sleep(30)
            return web.Response(body=PNG, content_type="image/png")
        return web.Response(text="<html>not an image</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # do not wait for /slow
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    try:
        yield server
    finally:
        await runner.cleanup()
