"""The worker's ADR-32 control subjects, against a real nats-server, read back with
nats.micro's own parsers so `nats micro ls/info/stats` see the same thing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from node_worker.service_api import Endpoint, ServiceApi

Reply = dict[str, Any]
ApiFactory = Callable[..., ServiceApi]


def llm_endpoint(node: str = "gpu-a") -> Endpoint:
    return Endpoint(name="llm", subject=f"node.{node}.llm.request", queue_group="node_worker")


def vision_endpoint(node: str = "gpu-a") -> Endpoint:
    return Endpoint(name="vision", subject=f"node.{node}.vision.request", queue_group="node_worker")


def make_api(name: str = "inferbus-node", **overrides: Any) -> ServiceApi:
    values: dict[str, Any] = {
        "name": name,
        "version": "0.1.0",
        "description": "LLM jobs for one GPU node",
        "metadata": {"node_id": "gpu-a"},
        "endpoints": [llm_endpoint(), vision_endpoint()],
    }
    values.update(overrides)
    return ServiceApi(**values)


@pytest.fixture
def service_name() -> str:
    """A service kind no other test uses, so `$SRV.<VERB>.<name>` reaches only ours."""
    return f"svc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def started(nc: NatsClient) -> AsyncIterator[Callable[[ServiceApi], Any]]:
    """`await started(api)`: start `api` on `nc`; every one is stopped at test end."""
    running: list[ServiceApi] = []

    async def start(api: ServiceApi) -> ServiceApi:
        await api.start(nc)
        running.append(api)
        return api

    yield start
    for api in running:
        await api.stop()


async def gather(
    nc: NatsClient,
    *subjects: str,
    until: Callable[[list[Reply]], bool],
    timeout_s: float = 5,
) -> list[Reply]:
    """Send control requests, in order, to one inbox; collect replies until `until` holds."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    subscription = await nc.subscribe(inbox, cb=queue.put)
    replies: list[Reply] = []
    try:
        for subject in subjects:
            await nc.publish(subject, b"", reply=inbox)
        async with asyncio.timeout(timeout_s):
            while not until(replies):
                replies.append(json.loads((await queue.get()).data))
    finally:
        await subscription.unsubscribe()
    return replies


def from_all(*apis: ServiceApi) -> Callable[[list[Reply]], bool]:
    return lambda replies: {api.id for api in apis} <= {reply["id"] for reply in replies}


def ours(replies: list[Reply], api: ServiceApi) -> list[Reply]:
    return [reply for reply in replies if reply["id"] == api.id]


async def request_one(nc: NatsClient, subject: str, payload: bytes = b"") -> Reply:
    reply: Reply = json.loads((await nc.request(subject, payload, timeout=5)).data)
    return reply


async def test_ping_to_all_services_reaches_every_instance(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    first = await started(make_api(service_name))
    second = await started(make_api(service_name))

    replies = await gather(nc, "$SRV.PING", until=from_all(first, second))

    pings = [ServicePing.from_dict(reply) for reply in ours(replies, first) + ours(replies, second)]
    assert [ping.id for ping in pings] == [first.id, second.id]
    assert all(ping.name == service_name and ping.version == "0.1.0" for ping in pings)
    assert all(ping.metadata == {"node_id": "gpu-a"} for ping in pings)
    assert all(reply["type"] == "io.nats.micro.v1.ping_response" for reply in replies)


async def test_ping_by_name_reaches_every_instance_of_that_kind(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    first = await started(make_api(service_name))
    second = await started(make_api(service_name))

    replies = await gather(nc, f"$SRV.PING.{service_name}", until=from_all(first, second))

    assert {reply["id"] for reply in replies} == {first.id, second.id}


async def test_ping_by_name_and_id_reaches_only_that_instance(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    first = await started(make_api(service_name))
    second = await started(make_api(service_name))

    reply = await request_one(nc, f"$SRV.PING.{service_name}.{second.id}")

    assert ServicePing.from_dict(reply).id == second.id
    assert first.id != second.id


async def test_info_lists_endpoints_with_subject_queue_group_and_metadata(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    api = await started(make_api(service_name))

    info = ServiceInfo.from_dict(await request_one(nc, f"$SRV.INFO.{service_name}.{api.id}"))

    assert info.type == "io.nats.micro.v1.info_response"
    assert (info.id, info.name, info.version) == (api.id, service_name, "0.1.0")
    assert info.description == "LLM jobs for one GPU node"
    assert info.metadata == {"node_id": "gpu-a"}
    assert [(e.name, e.subject, e.queue_group) for e in info.endpoints] == [
        ("llm", "node.gpu-a.llm.request", "node_worker"),
        ("vision", "node.gpu-a.vision.request", "node_worker"),
    ]


async def test_info_to_all_services_includes_this_instance(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    api = await started(make_api(service_name))

    replies = await gather(nc, "$SRV.INFO", until=from_all(api))

    assert ServiceInfo.from_dict(ours(replies, api)[0]).name == service_name


async def test_stats_are_zero_before_any_request(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    api = await started(make_api(service_name))

    stats = ServiceStats.from_dict(await request_one(nc, f"$SRV.STATS.{service_name}.{api.id}"))

    assert [(e.name, e.num_requests, e.num_errors, e.last_error) for e in stats.endpoints] == [
        ("llm", 0, 0, ""),
        ("vision", 0, 0, ""),
    ]


async def test_stats_count_requests_errors_and_processing_time(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    api = await started(make_api(service_name))
    api.record("llm", elapsed_s=0.010)
    api.record("llm", elapsed_s=0.030, error="BUSY: all slots taken")
    api.record("llm", elapsed_s=0.020)

    reply = await request_one(nc, f"$SRV.STATS.{service_name}")
    stats = ServiceStats.from_dict(reply)

    assert reply["type"] == "io.nats.micro.v1.stats_response"
    assert stats.id == api.id
    llm, vision = stats.endpoints
    assert (llm.name, llm.subject, llm.queue_group) == (
        "llm",
        "node.gpu-a.llm.request",
        "node_worker",
    )
    assert (llm.num_requests, llm.num_errors) == (3, 1)
    assert llm.last_error == "BUSY: all slots taken"
    assert llm.processing_time == 60_000_000
    assert llm.average_processing_time == 20_000_000
    assert (vision.num_requests, vision.processing_time) == (0, 0)


async def test_stats_report_when_the_instance_started_in_utc(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
    api = await started(make_api(service_name, clock=lambda: when))

    reply = await request_one(nc, f"$SRV.STATS.{service_name}.{api.id}")

    assert reply["started"] == "2025-03-04T05:06:07.890Z"
    assert ServiceStats.from_dict(reply).started == when.replace(tzinfo=None)


async def test_another_service_name_is_not_answered(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    other_name = f"{service_name}-other"
    api = await started(make_api(service_name))
    other = await started(make_api(other_name))

    # The second request is one `api` does answer; a reply to the first would come before it.
    replies = await gather(
        nc,
        f"$SRV.INFO.{other_name}",
        f"$SRV.INFO.{service_name}.{api.id}",
        until=from_all(api, other),
    )

    assert sorted(reply["name"] for reply in replies) == sorted([other_name, service_name])
    assert len(ours(replies, api)) == 1


async def test_control_request_with_a_payload_is_still_answered(
    nc: NatsClient, started: Any, service_name: str
) -> None:
    api = await started(make_api(service_name))

    reply = await request_one(nc, f"$SRV.PING.{service_name}.{api.id}", b'{"anything": 1}')

    assert reply["id"] == api.id


async def test_stopped_instance_no_longer_answers_and_stop_is_idempotent(
    nc: NatsClient, service_name: str
) -> None:
    api = make_api(service_name)
    await api.start(nc)
    await api.stop()
    await api.stop()

    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(f"$SRV.PING.{service_name}.{api.id}", b"", timeout=5)


async def test_stop_after_the_connection_closed_does_not_raise(
    nats_server: Any, service_name: str
) -> None:
    client = await nats.connect(nats_server.url)
    api = make_api(service_name)
    await api.start(client)
    await client.close()

    await api.stop()

    assert api.stats().id == api.id


def test_every_instance_gets_its_own_id() -> None:
    assert make_api().id != make_api().id


def test_reset_zeroes_the_counters() -> None:
    api = make_api()
    api.record("vision", elapsed_s=0.5, error="BACKEND_ERROR: 500")

    api.reset()

    vision = api.stats().endpoints[1]
    assert (vision.num_requests, vision.num_errors, vision.last_error) == (0, 0, None)
    assert (vision.processing_time, vision.average_processing_time) == (0, 0)


def test_recording_an_unknown_endpoint_is_a_wiring_bug() -> None:
    with pytest.raises(KeyError):
        make_api().record("embed", elapsed_s=0.1)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"name": "bad name"}, "name"),
        ({"version": "1.0"}, "version"),
        ({"endpoints": [llm_endpoint(), llm_endpoint("gpu-b")]}, "unique"),
    ],
)
def test_invalid_service_config_is_refused(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        make_api(**overrides)


def test_endpoint_name_must_be_a_token() -> None:
    with pytest.raises(ValueError, match="endpoint name"):
        Endpoint(name="llm.request", subject="node.gpu-a.llm.request")
