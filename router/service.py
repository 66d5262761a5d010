"""The router process: the HTTP API at once, NATS and the fleet view in the background.

The router's parts are built and wired here, once (`wire_router`): each receives the
settings section and the collaborators it uses, never the whole settings; nothing below
reads the environment.

HTTP opens first, so `/health`, `/ready` and the local and static routes answer while
NATS is unreachable (`/ready` says so); the connection is tried in the background until
it succeeds, then the fleet view and the reply inboxes start. A taken HTTP port or bad
NATS credentials are fatal with a clear cause (`StartupError`, `fatal`); the process
entry point turns them into exit 2. Start-up that fails half-way stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from nats.aio.client import Client as NatsClient

from router.admission.idempotency import IdempotencyGate, KeptAnswers, fleet_model
from router.admission.limits_bucket import open_bucket
from router.admission.line import Admission
from router.admission.sealing import SealedRecords
from router.admission.shared_limits import SharedCounters
from router.admission.shared_running import SharedRunning
from router.admission.slots import LaneSlots
from router.admission.tenants import TenantConfigError, TenantDirectory
from router.attempts.board import BreakerBoard
from router.attempts.health import HealthBoard, HealthEvents
from router.attempts.runtime_target import StaticRuntimes
from router.cloud.cooldowns import CloudHealthBoard
from router.cloud.providers import ProviderConfigError, listed_models
from router.cloud.targets import CloudProviders
from router.config import RouterSettings, load_router_settings
from router.fleet.view import FleetView
from router.http.app import build_app
from router.http.edge import Api
from router.http.live.feed import LiveFeed
from router.http.live.rows import queue_summary
from router.http.operator_fleet import FleetStatus
from router.metrics import RouterMetrics
from router.reload import plan_reload
from router.serving.call import Calls
from router.serving.dispatch import LocalRuntime, Router
from router.serving.liveness import Liveness, LivenessSettings
from router.serving.model_show import ModelShows
from router.serving.node_link import NodeLink
from router.serving.node_target import NodeCalls
from services.bus import cancel_until_done, describe, is_auth_refusal
from services.errors import InferbusError
from services.keystore import ROUTER_SPACE, SharedKeys
from services.lifecycle import AsyncService
from services.reachability import NatsOutage
from services.runtimes import make_runtime, new_http_client
from services.runtimes.errors import redact
from services.settings import ConfigError
from services.shared_claims import SharedClaims
from services.subjects import Subjects
from services.tracing import Tracing

log = logging.getLogger("inferbus.router")

STARTUP_WAIT_S = 2.0
# The longest one step of the shared idempotency store may take before a keyed request
# goes on without it: an unreachable store must not eat the caller's budget.
SHARED_STEP_S = 0.5


class StartupError(Exception):
    """The router cannot start as configured; the message says why."""


def bind_http(host: str, port: int) -> socket.socket:
    """The listening socket, or a StartupError naming the taken port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} is in use") from error
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@dataclass(frozen=True)
class Wired:
    """The router's parts, as `wire_router` built them."""

    router: Router
    health: HealthBoard
    link: NodeLink
    liveness: Liveness
    nodes: NodeCalls
    tracing: Tracing
    cloud_board: CloudHealthBoard  # a reload's new cloud providers keep their cooldowns here
    shows: ModelShows  # a served model's details from a node (Ollama's `/api/show`)


def cloud_providers(
    settings: RouterSettings,
    board: CloudHealthBoard,
    http: httpx.AsyncClient,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
) -> CloudProviders:
    """The cloud providers of `settings` (raises ProviderConfigError naming an unset key
    variable); their cooldowns and model health live on `board`, which outlives a reload."""
    return CloudProviders(
        settings.providers,
        selection=settings.selection,
        fallbacks=tuple(settings.fallbacks),
        board=board,
        http=http,
        environ=environ,
        clock=clock,
    )


def wire_router(
    settings: RouterSettings,
    *,
    nc: NatsClient,
    fleet: FleetView,
    http: httpx.AsyncClient,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
) -> Wired:
    """Build the dispatcher and its collaborators, and hook them to the fleet view.

    Raises:
        ProviderConfigError: a cloud provider's key variable is unset (it names it).
    """
    tracing = Tracing(settings.telemetry, service="inferbus-router")
    events = HealthEvents()
    breakers = BreakerBoard(settings.breakers, events)
    cloud_board = CloudHealthBoard(settings.failover, events)
    health = HealthBoard(breakers, cloud_board, events)
    cloud = cloud_providers(settings, cloud_board, http, environ, clock)
    subjects = Subjects(settings.subject_prefix)
    link = NodeLink(nc, subjects)
    # A served model's details from a node's runtime (Ollama's `/api/show`).
    shows = ModelShows(link, subjects, fleet.index, clock)
    offload = settings.offload
    liveness = Liveness(
        link,
        link.node_lost,
        LivenessSettings(
            offload.liveness_interval_ms / 1000.0,
            offload.liveness_timeout_ms / 1000.0,
            offload.liveness_misses,
        ),
    )

    def connected() -> bool:
        return nc.is_connected

    nodes = NodeCalls(link, liveness, fleet, breakers, offload, connected=connected, clock=clock)
    local = settings.local_runtime
    local_runtime = None
    if local is not None:
        key = environ.get(local.api_key_env) if local.api_key_env else None
        runtime = make_runtime(local.kind, local.url, http, api_key=key)
        local_runtime = LocalRuntime(runtime, settings.local_node)
    router = Router(
        offload=offload,
        selection=settings.selection,
        fleet=fleet,
        health=health,
        nodes=nodes,
        cloud=cloud,
        statics=StaticRuntimes(settings.selection, http, environ),
        local=local_runtime,
        connected=connected,
        clock=clock,
        tracing=tracing,
    )
    fleet.on_record(router.heard_from)
    fleet.on_forget(lambda node: breakers.forget(node, clock()))
    return Wired(router, health, link, liveness, nodes, tracing, cloud_board, shows)


class RouterService(AsyncService):
    def __init__(self, settings: RouterSettings, *, config_path: Path | None = None) -> None:
        self.settings = settings
        self._config_path = config_path  # what a reload reads (SIGHUP, POST /admin/reload)
        self._http = new_http_client()
        self._nc = NatsClient()
        self.fleet = FleetView(
            self._nc,
            Subjects(settings.subject_prefix),
            clock=time.monotonic,
            local_node=settings.local_node,
            settings=settings.fleet,
        )
        clock = time.monotonic  # the one clock of deadlines, breakers and kept answers
        self._clock = clock
        try:
            wired = wire_router(
                settings,
                nc=self._nc,
                fleet=self.fleet,
                http=self._http,
                environ=os.environ,
                clock=clock,
            )
            directory = TenantDirectory.build(
                settings.http.api_keys, settings.admission, os.environ
            )
        except (ProviderConfigError, TenantConfigError) as error:  # names the unset variable
            raise StartupError(str(error)) from None
        self.router, self.health, self.link = wired.router, wired.health, wired.link
        self._liveness, self._nodes = wired.liveness, wired.nodes
        self.tracing = wired.tracing
        self._cloud_board = wired.cloud_board
        self.shows = wired.shows
        self.metrics = RouterMetrics(
            lambda: self.health.snapshot(time.monotonic()).breakers,
            lambda: self.router.cloud.view(),  # the cloud a reload made, when it did
        )
        slots = LaneSlots(
            self.fleet,
            self.health.breakers,
            selection=lambda: self.settings.selection,
            connected=lambda: self._nc.is_connected,
            clock=clock,
        )
        self.admission = Admission(
            self.router.dispatch,
            slots,
            settings.admission,
            directory,
            clock=clock,
            metrics=self.metrics,
        )
        # Capacity may free: a worker's record (a slot announced free), a breaker's change.
        self.fleet.on_record(self.admission.wake)
        self.health.subscribe(self.admission.wake)
        idempotency = settings.idempotency
        self.gate = IdempotencyGate(
            self.admission.dispatch,
            resolve_model=fleet_model(lambda: self.settings.selection, self.fleet),
            answers=KeptAnswers(
                ttl_s=idempotency.ttl_s, max_entries=idempotency.max_entries, clock=clock
            ),
            clock=clock,
        )
        self._calls = Calls(settings.offload.default_budget_ms, clock=clock)
        self.live = LiveFeed(
            self.fleet,
            breakers=self.health.breakers_of,
            providers=lambda: self.router.cloud.view(),  # the cloud a reload made, when it did
            queue=lambda: queue_summary(self.admission.snapshot()),
        )
        self.health.subscribe(lambda change: self.live.health_changed(change.kind, change.owner))
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.fatal = asyncio.Event()  # set when the router must exit (see `fatal_cause`)
        self.fatal_cause = ""
        self.fatal_exit_code = 2  # bad credentials: restarting cannot help
        self._stopping = False
        self._outage = NatsOutage(redact(", ".join(settings.nats_url)))
        self._shared_running: SharedRunning | None = None

    async def _show_model(
        self, name: str, verbose: bool, first: str | None
    ) -> dict[str, Any] | InferbusError:
        """A served model's details from a node that serves it (Ollama's `/api/show`),
        asking `first` first when it can be asked."""
        return await self.shows.show(name, verbose=verbose, first=first)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        http = self.settings.http
        sock = bind_http(http.host, http.port)
        metrics = self.metrics
        self.fleet.on_forget(metrics.forget)
        settings = self.settings
        api = Api(
            settings.http,
            settings.images,
            self._calls,
            self.gate,
            metrics,
            self.admission,
            tracing=self.tracing,
            live=self.live,
        )
        status = FleetStatus(
            self.fleet,
            breakers_of=self.health.breakers_of,
            bus_connected=lambda: self._nc.is_connected,
            has_local_runtime=self.router.local is not None,
            registry=metrics.registry,
        )
        config = uvicorn.Config(
            build_app(
                api,
                status,
                lambda: self.router.cloud.view(),  # the cloud a reload made, when it did
                reload=self.reload,
                cloud_models=listed_models(self.settings.providers),
                show_model=self._show_model,
                live=self.live,
            ),
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._serving.done():
                    await self._serving  # raises why it could not serve
                    raise StartupError(f"router HTTP server on port {http.port} did not start")
                await asyncio.sleep(0.01)
        self.port = sock.getsockname()[1]
        log.info("router listening on http://%s:%d", http.host, self.port)
        await self.live.start()
        self._connecting = asyncio.create_task(self._connect())
        self._connecting.add_done_callback(self._connected_or_not)
        # A reachable NATS gives a complete fleet view before the first request; an
        # unreachable one costs start-up at most this long (HTTP already serves).
        # Its failures are told by `_connected_or_not`, whenever they happen.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._connecting), STARTUP_WAIT_S)

    def _connected_or_not(self, task: asyncio.Task[None]) -> None:
        """A start-up step after the connect that failed (the fleet view, the shared store)
        leaves a router that cannot serve the fleet: say why and exit, never run on silently."""
        error = None if task.cancelled() else task.exception()
        if error is None or self._stopping or self.fatal.is_set():
            return
        self.fatal_cause = f"NATS start-up failed: {describe(error)}"
        self.fatal_exit_code = 1  # not a configuration error: a supervisor may restart it
        log.error("%s", self.fatal_cause)
        self.fatal.set()

    async def _connect(self) -> None:
        """Connect (nats-py retries forever), then start the fleet view and the inboxes."""
        await self._nc.connect(
            servers=list(self.settings.nats_url),
            name="inferbus-router",
            **self.settings.nats.connect_options(),
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py's hint; a float works
            connect_timeout=2,
        )
        self._say_reached()
        await self.link.start()
        await self.fleet.start()
        idempotency = self.settings.idempotency
        if idempotency.store == "jetstream":
            # Until NATS is reached, duplicates are caught by this router's memory alone.
            keys = await SharedKeys.make(
                self._nc,
                bucket=idempotency.bucket,
                ttl_s=idempotency.ttl_s,
                space=ROUTER_SPACE,
                codec=SealedRecords(idempotency.sealing_key()),
                max_bytes=idempotency.max_bytes,
            )
            self.gate.share(
                SharedClaims(
                    keys,
                    owner="router",
                    lease_s=idempotency.lease_s,
                    op_timeout_s=SHARED_STEP_S,
                    monotonic=self._clock,
                )
            )
        if self.settings.limits.shared:
            # Until NATS is reached, each router counts its tenants' limits alone.
            await self._share_limits()
        log.info("connected to nats; %d nodes known", len(self.fleet.nodes))

    async def _share_limits(self) -> None:
        """Tenants' rpm, tpm and running calls counted with the other routers, in KV."""
        limits = self.settings.limits
        kv = await open_bucket(self._nc, limits.bucket, limits.max_bytes)

        def connected() -> bool:
            return self._nc.is_connected

        running = SharedRunning(
            kv,
            lease_s=limits.lease_s,
            wall_clock=time.time,
            on_change=self.admission.wake,
            connected=connected,
        )
        self._shared_running = running
        await running.start(self._nc, limits.bucket)
        self.admission.share(SharedCounters(kv, time.time, connected), running)

    async def _on_nats_error(self, error: Exception) -> None:
        if is_auth_refusal(error):
            self.fatal_cause = f"NATS refused the router's credentials: {describe(error)}"
            log.error("%s", self.fatal_cause)
            self.fatal.set()
            if self._connecting is not None and not self._connecting.done():
                self._connecting.cancel()
            return
        if not self._nc.is_connected and not self._stopping:
            line = self._outage.failed(describe(error), time.monotonic())
            if line is not None:
                log.warning("%s", line)
            return
        log.warning("nats: %s", describe(error))

    def _say_reached(self) -> None:
        line = self._outage.reached(time.monotonic())
        if line is not None:
            log.info("%s", line)

    async def _on_disconnected(self) -> None:
        if not self._stopping:
            log.warning("disconnected from nats; reconnecting (local runtime still serves)")

    async def _on_reconnected(self) -> None:
        self._say_reached()
        self._nodes.reconnected()
        log.info("reconnected to nats")

    async def reload(self) -> dict[str, Any]:
        """Read the config file again and apply what can change while running (tenants,
        keys, limits, the queue's classes, profiles, providers); calls in flight and
        waiting go on. A file that does not load, or names an unset key variable,
        changes nothing: the answer (and the log) says why."""
        if self._config_path is None:
            return {"reloaded": False, "error": "the router was started without a config file"}
        try:
            loaded = load_router_settings(self._config_path)
            plan = plan_reload(self.settings, loaded)
            new = plan.settings
            directory = TenantDirectory.build(new.http.api_keys, new.admission, os.environ)
            cloud = self.router.cloud
            if plan.cloud_changed:
                cloud = cloud_providers(new, self._cloud_board, self._http, os.environ)
        except (ConfigError, TenantConfigError, ProviderConfigError) as error:
            log.error("reload refused, the running config stays: %s", error)
            return {"reloaded": False, "error": str(error)}
        self.settings = new
        if plan.cloud_changed:
            statics = StaticRuntimes(new.selection, self._http, os.environ)
            self.router.reconfigure(new.selection, cloud, statics)
        self.admission.configure(new.admission, directory)
        applied, waiting = list(plan.applied), list(plan.needs_restart)
        log.info("config reloaded: applied %s; needs a restart: %s", applied, waiting)
        return plan.report()

    @property
    def nc(self) -> NatsClient:
        return self._nc

    @property
    def url(self) -> str:
        return f"http://{self.settings.http.host}:{self.port}"

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._connecting is not None:
            await cancel_until_done(self._connecting)  # nats-py can lose one cancellation
        await self.live.stop()  # open event streams end, so the server can
        if self._server is not None:
            self._server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, 10)
            self._serving = None
        await self._liveness.stop()
        if self._shared_running is not None:
            await self._shared_running.stop()
        if self.admission.shared is not None:
            await self.admission.shared.stop()
        await self.link.stop()
        await self.fleet.stop()
        with contextlib.suppress(Exception):
            await self._nc.close()
        await self._http.aclose()
        if self.tracing.enabled:  # what is left goes out (a thread: the exporter blocks)
            await asyncio.to_thread(self.tracing.shutdown)
