"""The node worker process: NATS wiring around the job pipeline.

Subscribes `node.<id>.llm.request`, `.vision.request` and `.embed.request` in queue group
`node_worker`, hands every admitted job to a task of its own (so the subscription keeps
draining while jobs run), and sends exactly one final reply per message. `drain()` stops
taking jobs, lets running ones finish within a grace period, then disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from node_worker.admission import Admission
from node_worker.backends import build_backend
from node_worker.catalog import Catalog
from node_worker.chunks import ChunkSender
from node_worker.config import WorkerSettings
from node_worker.discovery import discover
from node_worker.hardware import read_hardware
from node_worker.idempotency import IdempotencyStore
from node_worker.jobs import (
    DEFAULT_BUS_LIMIT,
    Admitted,
    JobLimits,
    JobPipeline,
    Joined,
    cancelled,
    internal,
    stopped,
)
from node_worker.metrics import WorkerMetrics
from node_worker.model_show import ModelShow
from node_worker.registry import Announcer, build_capabilities
from node_worker.runtime_follow import RuntimeFollower
from node_worker.service_api import Endpoint, ServiceApi
from node_worker.twins import TwinWatch
from services import __version__
from services.big_json import encode_answer
from services.bus import connect_until_stopped, describe, flush_interest
from services.capabilities import Capabilities, Hardware, record_ttl_s
from services.errors import HTTP_STATUS, ErrorCode, InferbusError
from services.keystore import (
    BucketMissing,
    PlainRecords,
    SharedKeys,
    StoreUnavailable,
    worker_space,
)
from services.lifecycle import AsyncService
from services.metrics_http import MetricsServer
from services.reachability import NatsOutage
from services.runtimes import new_http_client
from services.runtimes.base import Runtime
from services.runtimes.errors import redact
from services.shared_claims import SharedClaims
from services.subjects import WORKER_QUEUE_GROUP, Subjects, inbox_prefix
from services.tracing import Span, Tracing
from services.wire import (
    JobResponse,
    JobType,
    cancel_target,
    encode,
    new_job_id,
    replay_pieces,
    slot_kind,
)

log = logging.getLogger("inferbus.worker")

SERVICE_NAME = "inferbus-node"
# One subscription (and slot kind) each; code jobs ride the llm subject.
JOB_SUBJECT_TYPES: tuple[JobType, ...] = ("llm", "vision", "embed")
STORE_JOIN_TIMEOUT_S = 3.0
STORE_JOIN_RETRY_S = 2.0
BUCKET_MAKE_TIMEOUT_S = 1.0


def _admitted_as(decision: object) -> str:
    """How admission decided, for the admit span: run, join a running twin, or answer."""
    if isinstance(decision, Admitted):
        return "run"
    if isinstance(decision, Joined):
        return "joined"
    if isinstance(decision, JobResponse) and decision.cached:
        return "replayed"
    return "answered"


def header_safe(text: str, limit: int = 256) -> str:
    """Printable ASCII only: a header value with a control byte breaks the connection."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


class Worker(AsyncService):
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        http_client: httpx.AsyncClient | None = None,
        stop: asyncio.Event | None = None,
    ):
        """`stop`, when given, is the process's signal: setting it while the worker still
        waits for NATS makes `start()` return at once, unconnected."""
        self.settings = settings
        self._stop_requested = stop or asyncio.Event()
        self.node_id = settings.node_id
        # Random per process: routers order records by seq per instance, and two processes
        # announcing one node id can be told apart.
        self.instance = uuid.uuid4().hex[:12]
        self.subjects = Subjects(settings.subject_prefix)
        self.metrics = WorkerMetrics()
        self.tracing = Tracing(
            settings.telemetry,
            service="inferbus-worker",
            attributes={"inferbus.node": self.node_id},
        )
        self.admission = Admission(
            llm_capacity=settings.limits.llm_concurrency,
            vision_capacity=settings.limits.vision_concurrency,
            embed_capacity=settings.limits.embed_concurrency,
            on_saturation_change=self._announce_now,
        )
        for kind in JOB_SUBJECT_TYPES:
            self.metrics.track_inflight(kind, self._inflight_reader(kind))
        self._own_http = http_client is None
        self._http = http_client or new_http_client()
        self.backends = [build_backend(backend, self._http) for backend in settings.backends]
        self._backend_of = {
            id(backend.runtime): backend for backend in self.backends if backend.runtime
        }
        self.catalog = Catalog([])
        self.hardware: Hardware | None = None
        self._listed_at = -math.inf
        self.pipeline = JobPipeline(
            node_id=self.node_id,
            limits=JobLimits(
                default_timeout_ms=settings.default_timeout_ms,
                max_request_bytes=settings.limits.max_request_bytes,
                retry_after_ms=settings.limits.retry_after_ms,
                images=settings.images,
            ),
            admission=self.admission,
            idempotency=IdempotencyStore(
                ttl_s=settings.idempotency.ttl_s, max_entries=settings.idempotency.max_entries
            ),
            catalog=lambda: self.catalog,
            metrics=self.metrics,
            on_runtime_done=self._runtime_done,
            on_other_model=lambda served, named: self.follower.answered_as(served, named),
            bus_limit=self._bus_limit,
            tracing=self.tracing,
        )
        self._nc: NatsClient | None = None
        self._subscriptions: list[Subscription] = []  # the job subjects
        self._cancels: Subscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running: dict[str, asyncio.Task[Any]] = {}  # job id -> task, for cancellation
        self._cancelled: set[str] = set()
        self._announcer: Announcer | None = None
        self._show: ModelShow | None = None
        self.service = ServiceApi(
            name=SERVICE_NAME,
            version=__version__,
            description=f"inferbus node worker {self.node_id}",
            metadata={"node_id": self.node_id},
            endpoints=[
                Endpoint("llm", self.subjects.job(self.node_id, "llm"), WORKER_QUEUE_GROUP),
                Endpoint("vision", self.subjects.job(self.node_id, "vision"), WORKER_QUEUE_GROUP),
                Endpoint("embed", self.subjects.job(self.node_id, "embed"), WORKER_QUEUE_GROUP),
                Endpoint("caps", self.subjects.caps(self.node_id), WORKER_QUEUE_GROUP),
                Endpoint("show", self.subjects.show(self.node_id), WORKER_QUEUE_GROUP),
            ],
        )
        self._metrics_server: MetricsServer | None = None
        self.follower = RuntimeFollower(
            backends=self.backends,
            admission=self.admission,
            limits=settings.limits,
            health=settings.health,
            relisted=self._relisted,
            spawn=self._spawn,
        )
        self.twins: TwinWatch | None = None
        self._stopped = False
        self._joining: asyncio.Task[None] | None = None
        self._refusals: list[str] = []  # the server's last permission violations
        self._outage = NatsOutage(redact(", ".join(settings.nats_url)))

    def _bus_limit(self) -> int:
        return self._nc.max_payload if self._nc is not None else DEFAULT_BUS_LIMIT

    def _inflight_reader(self, kind: str) -> Callable[[], int]:
        return lambda: self.admission.load()[kind].inflight

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server else None

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None, "worker not started"
        return self._nc

    async def start(self) -> None:
        await self.refresh()
        self._nc = await self._connect()
        if self._nc is None:
            return  # stopped while waiting for NATS: nothing was started
        self._say_reached()
        if self.settings.idempotency.store == "jetstream":
            try:
                await self._join_store()
            except StoreUnavailable:
                await self.stop()
                raise
        for job_type in JOB_SUBJECT_TYPES:
            subject = self.subjects.job(self.node_id, job_type)
            self._subscriptions.append(
                await self.nc.subscribe(
                    subject, queue=WORKER_QUEUE_GROUP, cb=self._handler_for(job_type)
                )
            )
        self._cancels = await self.nc.subscribe(
            self.subjects.cancel(self.node_id), cb=self._on_cancel
        )
        self._show = ModelShow(
            self.nc,
            self.subjects,
            self.node_id,
            lambda: self.catalog,
            lambda elapsed_s, error: self.service.record("show", elapsed_s=elapsed_s, error=error),
        )
        await self._show.start()
        await flush_interest(self.nc)
        self._announcer = Announcer(
            self.nc,
            self.subjects,
            self.node_id,
            heartbeat_s=self.settings.heartbeat_s,
            refresh=self.refresh,
            record=self.capabilities,
            caps_answered=lambda elapsed_s: self.service.record("caps", elapsed_s=elapsed_s),
        )
        if not self.settings.replicas:
            self.twins = TwinWatch(self.nc, self.subjects, self.node_id, self.instance)
            await self.twins.start()
        await self._announcer.start()
        await self.service.start(self.nc)
        if self.settings.metrics_port is not None:
            self._metrics_server = MetricsServer(
                self.metrics.registry, self.settings.metrics_host, self.settings.metrics_port
            )
            await self._metrics_server.start()
        log.info(
            "worker %s serving %d models from %d of %d runtimes",
            self.node_id,
            len(self.catalog.models),
            self.catalog.runtime_count,
            len(self.backends),
            extra={"node_id": self.node_id},
        )

    async def _join_store(self) -> None:
        """Claim keys in this node's space of the shared bucket. A bucket that is not there
        yet (routers make it) is joined in the background; JetStream off or a missing
        grant raises StoreUnavailable, which stops the process (exit 2)."""
        try:
            keys = await self._store_keys()
        except BucketMissing as missing:
            if self._has_identity() or not await self._make_bucket():
                log.warning(
                    "%s: jobs run without the shared guard until a router makes it", missing
                )
                self._joining = asyncio.create_task(self._join_later())
                return
            keys = await self._store_keys()
        self._guard(keys)

    def _has_identity(self) -> bool:
        """Logged in as someone: then grants decide, and the shipped ones leave making the
        bucket to routers (trying would only put a permissions violation in the log)."""
        auth = self.settings.nats
        return any((auth.user, auth.token, auth.nkey_seed_file, auth.creds_file))

    async def _make_bucket(self) -> bool:
        """Make the bucket as routers do, on an open server (`inferbus up`, a lab): there
        every process may. False when it could not."""
        idempotency = self.settings.idempotency
        try:
            await SharedKeys.make(
                self.nc,
                bucket=idempotency.bucket,
                ttl_s=idempotency.ttl_s,
                space=worker_space(self.node_id),
                codec=PlainRecords(),
                timeout_s=BUCKET_MAKE_TIMEOUT_S,
            )
        except (StoreUnavailable, nats.errors.Error, TimeoutError):
            return False
        return True

    async def _store_keys(self) -> SharedKeys:
        return await SharedKeys.join(
            self.nc,
            bucket=self.settings.idempotency.bucket,
            space=worker_space(self.node_id),
            refused=lambda: "; ".join(dict.fromkeys(self._refusals)) or None,
            timeout_s=STORE_JOIN_TIMEOUT_S,
        )

    async def _join_later(self) -> None:
        while True:
            await asyncio.sleep(STORE_JOIN_RETRY_S)
            try:
                keys = await self._store_keys()
            except StoreUnavailable as error:
                if not isinstance(error, BucketMissing):
                    log.error("idempotency store: %s", error)
                continue
            self._guard(keys)
            log.info("idempotency store joined: keys are claimed in the shared bucket")
            return

    def _guard(self, keys: SharedKeys) -> None:
        lease_s = self.settings.idempotency.lease_s
        self.pipeline.guard_with(SharedClaims(keys, owner=self.node_id, lease_s=lease_s))

    async def _connect(self) -> NatsClient | None:
        """Connect, waiting for NATS if it is not up yet: start order must not matter.

        None when the process was told to stop meanwhile; `BusAuthRefused` when the server
        refuses the credentials (the process exits 2 with the cause).
        """
        servers = list(self.settings.nats_url)
        log.info("connecting to nats at %s", redact(", ".join(servers)))
        return await connect_until_stopped(
            self._stop_requested,
            servers=servers,
            name=f"inferbus-worker-{self.node_id}",
            **self.settings.nats.connect_options(),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            # Its own inboxes, which its grants name (`_INBOX_<node>.>`): JetStream's
            # answers to the shared store come there, and no other node can listen.
            inbox_prefix=inbox_prefix(self.node_id),
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )

    async def refresh(self) -> None:
        """Probe every runtime; list models (and read the GPUs) every `rediscover_s`."""
        relist = time.monotonic() - self._listed_at >= self.settings.rediscover_s
        if relist:
            self._listed_at = time.monotonic()
            self.hardware = await read_hardware()
        self.catalog = await discover(self.backends, self.settings.health, relist=relist)
        self.follower.follow_slots(self.catalog)

    def _relisted(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._announce_now()

    def capabilities(self, seq: int) -> Capabilities:
        """This node's record now."""
        return build_capabilities(
            node_id=self.node_id,
            version=__version__,
            seq=seq,
            now_unix=time.time(),
            ttl_s=record_ttl_s(self.settings.heartbeat_s),
            backends=self.backends,
            catalog=self.catalog,
            load=self.admission.load(),
            hardware=self.hardware,
            instance=self.instance,
        )

    def _announce_now(self) -> None:
        if self._announcer is not None:
            self._announcer.changed()

    def _runtime_done(self, runtime: Runtime, response: JobResponse) -> None:
        backend = self._backend_of.get(id(runtime))
        if backend is not None:
            backend.record_job(response)

    def _handler_for(self, subject_type: JobType) -> Any:
        endpoint = slot_kind(subject_type)

        async def on_message(msg: Msg) -> None:
            received_s = time.monotonic()
            if not msg.reply:
                log.warning(
                    "message without a reply subject dropped", extra={"subject": msg.subject}
                )
                return
            span = self.tracing.span("job", parent=msg.headers, kind="consumer")
            span.set("inferbus.node", self.node_id)
            span.set("inferbus.type", subject_type)
            try:
                with self.tracing.span("admit", parent=span) as admit:
                    decision = await self.pipeline.admit(msg.data, subject_type, received_s)
                    admit.set("inferbus.admitted", _admitted_as(decision))
            except Exception as exc:
                log.exception("admission failed")
                decision = internal(new_job_id(), self.node_id, exc)
            if isinstance(decision, JobResponse):
                await self._replay_chunk(msg.reply, decision)
                await self._reply(msg.reply, decision, endpoint, received_s, span)
            elif isinstance(decision, Admitted):
                span.set("inferbus.job_id", decision.request.job_id)
                span.set("inferbus.model", decision.served.name)
                self._spawn(self._run_and_reply(msg.reply, decision, endpoint, received_s, span))
            else:
                span.set("inferbus.job_id", decision.request.job_id)
                self._spawn(self._join_and_reply(msg.reply, decision, endpoint, received_s, span))

        return on_message

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_and_reply(
        self, reply_to: str, job: Admitted, endpoint: str, received_s: float, span: Span
    ) -> None:
        job_id = job.request.job_id
        task = asyncio.current_task()
        assert task is not None
        self._running[job_id] = task
        try:
            if job.request.stream:
                sender = ChunkSender(self.nc, reply_to, job_id)
                response = await self.pipeline.run(job, sender.text, sender.tool_calls, span)
            else:
                response = await self.pipeline.run(job, trace=span)
        except asyncio.CancelledError:
            if job_id not in self._cancelled:
                stop = stopped(job_id, self.node_id)
                await self._reply(reply_to, stop, endpoint, received_s, span)
                raise
            done = True if job.request.stream else None
            response = cancelled(job_id, self.node_id).model_copy(update={"done": done})
        finally:
            self._running.pop(job_id, None)
            self._cancelled.discard(job_id)
        await self._reply(reply_to, response, endpoint, received_s, span)

    async def _replay_chunk(self, reply_to: str, response: JobResponse) -> None:
        """A kept answer replayed to a stream: its tool calls whole, then its whole text,
        one chunk each (`replay_pieces`)."""
        if response.cached and response.done and response.result is not None:
            sender = ChunkSender(self.nc, reply_to, response.job_id)
            for piece in replay_pieces(response.result):
                await sender.piece(piece)

    async def _on_cancel(self, msg: Msg) -> None:
        """`node.<id>.cancel` `{"job_id": ...}`: stop that job's runtime call now."""
        job_id = cancel_target(msg.data)
        task = self._running.get(job_id) if job_id else None
        if job_id and task is not None and not task.done():
            self._cancelled.add(job_id)
            task.cancel()
            log.info("job cancelled by its caller", extra={"job_id": job_id})

    async def _join_and_reply(
        self, reply_to: str, job: Joined, endpoint: str, received_s: float, span: Span
    ) -> None:
        try:
            response = await self.pipeline.join(job)
            await self._replay_chunk(reply_to, response)
        except asyncio.CancelledError:
            stop = stopped(job.request.job_id, self.node_id)
            await self._reply(reply_to, stop, endpoint, received_s, span)
            raise
        except Exception as exc:
            log.exception("waiting for a duplicate failed", extra={"job_id": job.request.job_id})
            response = internal(job.request.job_id, self.node_id, exc)
        await self._reply(reply_to, response, endpoint, received_s, span)

    async def _reply(
        self,
        reply_to: str,
        response: JobResponse,
        endpoint: str,
        received_s: float,
        span: Span | None = None,
    ) -> None:
        """Send the one final answer, count it in the endpoint's service stats, and end
        the job's span with its outcome."""
        if span is not None:
            span.set("inferbus.outcome", response.error.code.value if response.error else "ok")
            span.set("inferbus.cached", response.cached)
            if response.error is not None:
                span.error(response.error.code.value)
            span.end()
        payload: bytes | None
        try:
            payload = await encode_answer(response, self.nc.max_payload)
        except Exception as exc:
            log.exception("answer could not be encoded", extra={"job_id": response.job_id})
            response = internal(response.job_id, self.node_id, exc)
            payload = encode(response)
        if payload is None:
            error = InferbusError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"the answer is over the bus limit of {self.nc.max_payload} bytes",
            )
            response = JobResponse.failure(
                response.job_id, error, node_id=self.node_id, model=response.model
            )
            payload = encode(response)
        headers = None
        if response.error is not None:
            headers = {
                "Nats-Service-Error-Code": str(HTTP_STATUS[response.error.code]),
                "Nats-Service-Error": header_safe(
                    f"{response.error.code.value}: {response.error.message}"
                ),
            }
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "job answered: %s",
                response.error.code.value if response.error else "ok",
                extra={"job_id": response.job_id, "model": response.model},
            )
        self.service.record(
            endpoint,
            elapsed_s=time.monotonic() - received_s,
            error=headers["Nats-Service-Error"] if headers else None,
        )
        try:
            await self.nc.publish(reply_to, payload, headers=headers)
        except Exception:
            log.exception("reply could not be sent", extra={"job_id": response.job_id})

    async def stop(self) -> None:
        await self.drain()

    async def drain(self) -> None:
        """Stop taking jobs, finish running ones within the grace period, disconnect."""
        if self._stopped:
            return
        self._stopped = True
        # drain(), not unsubscribe(): jobs already delivered to this process are still
        # admitted and answered; unsubscribe() would drop them unanswered.
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(subscription.drain(), 5)  # type: ignore[no-untyped-call]
        if self._announcer is not None:  # routers stop choosing it at once...
            await self._announcer.withdraw()
        if self.twins is not None:
            await self.twins.stop()
        if self._joining is not None:
            self._joining.cancel()
            await asyncio.gather(self._joining, return_exceptions=True)
        await self.service.stop()
        if self._tasks:
            # ...while the jobs it holds run on: it still answers the routers' liveness
            # probes (caps) and their cancels, so a draining node is not taken for dead.
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.drain_grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._announcer is not None:
            await self._announcer.stop()
        if self._cancels is not None:
            with contextlib.suppress(Exception):
                await self._cancels.unsubscribe()
        if self._show is not None:
            await self._show.stop()
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            with contextlib.suppress(Exception):  # the server may be gone already
                await self._nc.close()
        if self._own_http:
            await self._http.aclose()
        if self.tracing.enabled:  # what is left goes out (a thread: the exporter blocks)
            await asyncio.to_thread(self.tracing.shutdown)
        log.info("worker %s stopped", self.node_id, extra={"node_id": self.node_id})

    async def _on_nats_error(self, error: Exception) -> None:
        if "permissions violation" in str(error).lower():
            self._refusals = [*self._refusals[-9:], str(error)]
        if self._nc is None or not self._nc.is_connected:  # connecting or reconnecting
            line = self._outage.failed(describe(error), time.monotonic())
            if line is not None:
                log.warning("%s", line, extra={"node_id": self.node_id})
            return
        log.warning("nats: %s", error, extra={"node_id": self.node_id})

    def _say_reached(self) -> None:
        line = self._outage.reached(time.monotonic())
        if line is not None:
            log.info("%s", line, extra={"node_id": self.node_id})

    async def _on_disconnected(self) -> None:
        if self._stopped:
            return
        log.warning("disconnected from nats; reconnecting", extra={"node_id": self.node_id})

    async def _on_reconnected(self) -> None:
        self._say_reached()
        url = self._nc.connected_url.netloc if self._nc and self._nc.connected_url else "?"
        log.info("reconnected to nats at %s", url, extra={"node_id": self.node_id})
