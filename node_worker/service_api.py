"""The NATS services protocol (ADR-32) for the worker, over the worker's own subscriptions.

`nats.micro` runs one handler at a time per endpoint, which would serialize our jobs, so
the worker keeps its own job subscriptions and this module only answers the control
subjects (`$SRV.PING|INFO|STATS`, `.<name>`, `.<name>.<id>`; no queue group, so every
instance answers) and keeps the per-endpoint stats the worker feeds with `record()`.
The wire format is nats.micro's own dataclasses, so `nats micro ls/info/stats` read it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.service import (
    DEFAULT_PREFIX,
    DEFAULT_QUEUE_GROUP,
    NAME_REGEX,
    EndpointInfo,
    EndpointStats,
    ServiceConfig,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)
from nats.nuid import NUID

from services.bus import flush_interest

log = logging.getLogger("inferbus.worker.service_api")


class _Reply(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Endpoint:
    """One job subscription the worker owns, as INFO and STATS describe it."""

    name: str
    subject: str
    queue_group: str = DEFAULT_QUEUE_GROUP
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME_REGEX.match(self.name):
            raise ValueError(f"endpoint name {self.name!r}: only A-Z, a-z, 0-9, '-', '_'")


@dataclass
class _Counters:
    num_requests: int = 0
    num_errors: int = 0
    processing_time_ns: int = 0
    last_error: str | None = None


def wire_form(reply: dict[str, Any]) -> dict[str, Any]:
    """nats-py writes `"data": null` for an endpoint without data; the Go `micro` library
    omits the field and the jsm.go schema requires an object when it is there. `{}`, not
    omission: nats-py's own `EndpointStats.from_dict` needs the key."""
    for endpoint in reply.get("endpoints") or ():
        if isinstance(endpoint, dict) and "data" in endpoint and endpoint["data"] is None:
            endpoint["data"] = {}
    return reply


class ServiceApi:
    """Answers ADR-32 control requests for one service instance; `record()` feeds its stats.

    Args:
        name: the service kind, shared by every worker (`A-Z a-z 0-9 - _`).
        version: a SemVer string.
        endpoints: the job subscriptions to report; names must be unique.
        clock: returns the current UTC time, for `started`.
    """

    def __init__(
        self,
        *,
        name: str,
        version: str,
        endpoints: list[Endpoint],
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        ServiceConfig(name=name, version=version)  # nats.micro's own name/SemVer checks
        names = [endpoint.name for endpoint in endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"endpoint names must be unique: {names}")
        self.id = NUID().next().decode()
        self.name = name
        self.version = version
        self.description = description
        self.metadata = dict(metadata or {})
        self.endpoints = list(endpoints)
        self._prefix = prefix
        self._clock = clock
        self._counters = {endpoint.name: _Counters() for endpoint in endpoints}
        self._started = clock()
        self._nc: NatsClient | None = None
        self._subscriptions: list[Subscription] = []

    def record(self, endpoint: str, *, elapsed_s: float, error: str | None = None) -> None:
        """Count one handled request; pass `error` when its reply carried `Nats-Service-Error`.

        Raises:
            KeyError: `endpoint` is not one of the names given at construction.
        """
        counters = self._counters[endpoint]
        counters.num_requests += 1
        counters.processing_time_ns += max(0, round(elapsed_s * 1e9))
        if error is not None:
            counters.num_errors += 1
            counters.last_error = error

    def reset(self) -> None:
        """Zero every endpoint's stats and restart the `started` clock."""
        self._counters = {name: _Counters() for name in self._counters}
        self._started = self._clock()

    def ping(self) -> ServicePing:
        return ServicePing(
            id=self.id, name=self.name, version=self.version, metadata=dict(self.metadata)
        )

    def info(self) -> ServiceInfo:
        return ServiceInfo(
            id=self.id,
            name=self.name,
            version=self.version,
            description=self.description,
            metadata=dict(self.metadata),
            endpoints=[
                EndpointInfo(
                    name=endpoint.name,
                    subject=endpoint.subject,
                    queue_group=endpoint.queue_group,
                    metadata=dict(endpoint.metadata),
                )
                for endpoint in self.endpoints
            ],
        )

    def stats(self) -> ServiceStats:
        return ServiceStats(
            id=self.id,
            name=self.name,
            version=self.version,
            metadata=dict(self.metadata),
            started=self._started,
            endpoints=[self._endpoint_stats(endpoint) for endpoint in self.endpoints],
        )

    def _endpoint_stats(self, endpoint: Endpoint) -> EndpointStats:
        counters = self._counters[endpoint.name]
        return EndpointStats(
            name=endpoint.name,
            subject=endpoint.subject,
            queue_group=endpoint.queue_group,
            num_requests=counters.num_requests,
            num_errors=counters.num_errors,
            last_error=counters.last_error,
            processing_time=counters.processing_time_ns,
            average_processing_time=(
                counters.processing_time_ns // counters.num_requests if counters.num_requests else 0
            ),
        )

    async def start(self, nc: NatsClient) -> None:
        """Subscribe the nine control subjects; return once the server has them all."""
        if self._subscriptions:
            return
        self._nc = nc
        self._started = self._clock()
        snapshots: dict[ServiceVerb, Callable[[], _Reply]] = {
            ServiceVerb.PING: self.ping,
            ServiceVerb.INFO: self.info,
            ServiceVerb.STATS: self.stats,
        }
        for verb, snapshot in snapshots.items():
            handler = self._answer_with(verb, snapshot)
            for name, instance_id in ((None, None), (self.name, None), (self.name, self.id)):
                subject = control_subject(verb, name=name, id=instance_id, prefix=self._prefix)
                self._subscriptions.append(await nc.subscribe(subject, cb=handler))
        await flush_interest(nc)

    async def stop(self) -> None:
        """Unsubscribe the control subjects; safe to call twice or after the connection closed."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            # Closed or draining connection: the server forgets the interest anyway.
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    def _answer_with(
        self, verb: ServiceVerb, snapshot: Callable[[], _Reply]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def answer(msg: Msg) -> None:
            # Published straight to the inbox: msg.respond() would echo the request's headers.
            if not msg.reply or self._nc is None:
                return
            try:
                payload = json.dumps(wire_form(snapshot().to_dict())).encode()
                await self._nc.publish(msg.reply, payload)
            except Exception:
                log.warning("could not answer %s on %s", verb.value, msg.subject, exc_info=True)

        return answer
