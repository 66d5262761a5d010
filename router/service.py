"""The router process: NATS, the fleet view and the HTTP API, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats
import uvicorn
from nats.aio.client import Client as NatsClient

from router.app import build_app
from router.config import RouterSettings
from router.fleet import FleetView
from router.metrics import RouterMetrics
from router.routing import Router
from services.lifecycle import AsyncService
from services.runtimes import new_http_client
from services.subjects import Subjects

log = logging.getLogger("inferbus.router")


class RouterService(AsyncService):
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self._http = new_http_client()
        self._nc: NatsClient | None = None
        self.fleet: FleetView | None = None
        self.router: Router | None = None
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._nc = await nats.connect(
            servers=list(self.settings.nats_url),
            name="inferbus-router",
            **self.settings.nats.connect_options(),
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
        )
        self.fleet = FleetView(
            self._nc,
            Subjects(self.settings.subject_prefix),
            clock=time.monotonic,
            local_node=self.settings.local_node,
            settings=self.settings.fleet,
        )
        await self.fleet.start()
        self.router = Router(self.settings, nc=self._nc, fleet=self.fleet, http=self._http)
        metrics = RouterMetrics(
            lambda: self.router.breakers.snapshot(time.monotonic()) if self.router else {}
        )
        config = uvicorn.Config(
            build_app(self.router, metrics),
            host=self.settings.http.host,
            port=self.settings.http.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._serving.done():
                    await self._serving  # raises why it could not serve
                    raise RuntimeError(f"router HTTP server on port {config.port} did not start")
                await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        log.info(
            "router listening on http://%s:%d, %d nodes known",
            self.settings.http.host,
            self.port,
            len(self.fleet.nodes),
        )

    async def _on_nats_error(self, error: Exception) -> None:
        log.warning("nats: %s", error)

    async def _on_disconnected(self) -> None:
        if self._server is not None and not self._server.should_exit:
            log.warning("disconnected from nats; reconnecting (local runtime still serves)")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to nats")

    @property
    def url(self) -> str:
        return f"http://{self.settings.http.host}:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, 10)
            self._serving = None
        if self.fleet is not None:
            await self.fleet.stop()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
        await self._http.aclose()
