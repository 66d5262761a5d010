"""A tenant's `max_concurrent` across routers (`limits.shared`): the leases' arithmetic by
tables, then real routers on a real nats-server with JetStream in front of a slow
simulator."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from router.admission.leases import (
    Holding,
    decode_holdings,
    encode_holdings,
    grant,
    held_elsewhere,
    merge_heard,
    with_holding,
)
from router.admission.shared_limits import fits_under
from tests.conftest import RouterFactory, WorkerFactory
from tests.jobs import until
from tests.test_router_idempotency import router_process
from tests.test_router_queue import MODEL, chat, client, queued, slow_fleet
from tools.simulator import Fault

NOW = 1_000.0


def held(running: int, lease_end: float = NOW + 10, seq: int = 1) -> Holding:
    return Holding(running, lease_end, seq)


@pytest.mark.parametrize(
    ("holdings", "expected"),
    [
        pytest.param({}, 0, id="nobody"),
        pytest.param({"me": held(3)}, 0, id="only-mine"),
        pytest.param({"me": held(1), "b": held(2), "c": held(1)}, 3, id="two-others"),
        pytest.param({"b": held(2, lease_end=NOW)}, 0, id="lease-ran-out"),
        pytest.param({"b": held(2, lease_end=NOW - 5), "c": held(1)}, 1, id="one-ran-out"),
        pytest.param({"b": held(-1)}, 0, id="negative-is-nothing"),
    ],
)
def test_what_other_routers_hold(holdings: dict[str, Holding], expected: int) -> None:
    assert held_elsewhere(holdings, "me", NOW) == expected


def test_a_written_value_drops_leases_run_out_and_replaces_mine() -> None:
    found = {"me": held(1, seq=4), "live": held(2), "dead": held(5, lease_end=NOW - 1)}
    mine = Holding(2, NOW + 10, 5)
    written = with_holding(found, "me", mine, NOW)
    assert written == {"live": held(2), "me": mine}
    assert decode_holdings(encode_holdings(written)) == written


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[1, 2]", b'{"b": "x"}', b'{"b": [1, 2]}', None],
)
def test_an_unreadable_value_holds_nothing(data: bytes | None) -> None:
    assert held_elsewhere(decode_holdings(data), "me", NOW) == 0


@pytest.mark.parametrize(
    ("known", "incoming", "only_lower", "expected"),
    [
        pytest.param({}, {"b": held(2)}, False, {"b": held(2)}, id="read-teaches"),
        pytest.param({}, {"b": held(2)}, True, {}, id="heard-never-raises-the-unknown"),
        pytest.param(
            {"b": held(2, seq=3)}, {"b": held(1, seq=4)}, True, {"b": held(1, seq=4)}, id="lower"
        ),
        pytest.param(
            {"b": held(1, seq=3)}, {"b": held(2, seq=4)}, True, {"b": held(1, seq=3)},
            id="heard-higher-may-be-a-refused-write",
        ),
        pytest.param(
            {"b": held(1, seq=3)}, {"b": held(2, seq=4)}, False, {"b": held(2, seq=4)},
            id="read-higher",
        ),
        pytest.param(
            {"b": held(0, seq=9)}, {"b": held(2, seq=8)}, False, {"b": held(0, seq=9)},
            id="older-write-never-undoes-a-newer",
        ),
        pytest.param(
            {"b": held(2, lease_end=NOW - 1)}, {}, False, {}, id="run-out-forgotten"
        ),
    ],
)  # fmt: skip
def test_what_is_known_of_a_key(
    known: dict[str, Holding],
    incoming: dict[str, Holding],
    only_lower: bool,
    expected: dict[str, Holding],
) -> None:
    assert merge_heard(known, incoming, NOW, only_lower=only_lower) == expected


@pytest.mark.parametrize(
    ("limits", "elsewhere", "mine", "expected"),
    [
        pytest.param([2], 0, 0, [True], id="room"),
        pytest.param([2, 2, 2], 0, 0, [True, True, False], id="a-batch-fills-the-limit"),
        pytest.param([2], 1, 1, [False], id="full-across-routers"),
        pytest.param([None, 2], 2, 0, [True, False], id="not-for-the-fleet-counted-anyway"),
        pytest.param([3, 2, 3], 0, 1, [True, False, True], id="each-call-its-tenants-limit-then"),
        pytest.param([0], 0, 0, [False], id="zero"),
        pytest.param([], 5, 5, [], id="nobody-asks"),
    ],
)
def test_which_calls_asking_at_once_may_start(
    limits: list[int | None], elsewhere: int, mine: int, expected: list[bool]
) -> None:
    assert grant(limits, elsewhere, mine) == expected


@pytest.mark.parametrize(
    ("value", "adds", "expected"),
    [
        pytest.param(0, [(1, 2), (1, 2), (1, 2)], [True, True, False], id="requests-to-the-limit"),
        pytest.param(4, [(1, 5), (30, None), (1, 5)], [True, True, False], id="tokens-no-ceiling"),
        pytest.param(5, [(1, 5)], [False], id="at-the-limit"),
        pytest.param(0, [], [], id="nothing"),
    ],
)
def test_which_adds_fit_under_their_ceiling(
    value: int, adds: list[tuple[int, int | None]], expected: list[bool]
) -> None:
    assert fits_under(value, adds) == expected


# --- end to end -------------------------------------------------------------------------------

PAIR = [{"name": "pair", "key": "key-pair", "max_concurrent": 2}]
TENANTS = {"host": "127.0.0.1", "port": 0, "api_keys": PAIR}


def shared_limits(lease_s: float = 10.0) -> dict[str, Any]:
    return {"shared": True, "bucket": f"limits_{uuid.uuid4().hex[:12]}", "lease_s": lease_s}


async def test_two_routers_never_run_more_than_a_tenants_max_concurrent_together(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    limits = shared_limits()
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=6, latency_ms=500) as (sim, _),
        start_router(http=TENANTS, limits=limits) as first,
        start_router(http=TENANTS, limits=limits) as second,
        client(first, "key-pair") as one,
        client(second, "key-pair") as two,
    ):
        await until(lambda: first.admission.running is not None, 10)
        await until(lambda: second.admission.running is not None, 10)
        answers = await asyncio.gather(
            *((one if n % 2 else two).post("/infer", json=chat(f"q{n}")) for n in range(8))
        )
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    assert sim.peak_connections == 2  # six slots free, two routers: the tenant's two
    waited = [a.json()["route"]["queue_ms"] for a in answers]
    assert sum(1 for ms in waited if ms > 0) >= 4  # the excess waited in line


async def test_a_killed_routers_calls_stop_counting_after_its_lease(
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
    nats_server: Any,
    tmp_path: Path,
) -> None:
    """Router one runs the tenant's two calls (the runtime never answers them) and is
    killed: router two's call of the tenant waits while router one's lease lives, then
    runs. The node still has four slots, so only the tenant's limit can hold it."""
    limits = shared_limits(lease_s=4)
    node = f"{node_id}-0"
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=4, latency_ms=20) as (sim, _),
        router_process(
            tmp_path,
            {"nats_url": [nats_server.url], "limits": limits, "http": TENANTS},
            sees=node,
            api_key="key-pair",
        ) as (doomed, doomed_url),
        start_router(http=TENANTS, limits=limits) as survivor,
        client(survivor, "key-pair") as http,
        httpx.AsyncClient(
            base_url=doomed_url, timeout=30, headers={"Authorization": "Bearer key-pair"}
        ) as to_doomed,
    ):
        await until(lambda: survivor.admission.running is not None, 10)
        sim.set_fault(MODEL, Fault("hang", count=2))
        lost = [asyncio.ensure_future(to_doomed.post("/infer", json=chat())) for _ in range(2)]
        await until(lambda: sim.open_connections == 2, 10)
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        answer = await http.post("/infer", json=chat("after"))
        await asyncio.gather(*lost, return_exceptions=True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["route"]["queue_ms"] > 0  # it waited for router one's lease


async def test_a_tenant_at_its_limit_across_routers_waits_in_line_and_shows_in_queue(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """Router one runs the tenant's two calls (each answered after 4 s): router two's call
    of the tenant waits in its line, with slots free on the node, until one of them ends."""
    limits = shared_limits()
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=4, latency_ms=20) as (sim, _),
        start_router(http=TENANTS, limits=limits) as first,
        start_router(http=TENANTS, limits=limits) as second,
        client(first, "key-pair") as one,
        client(second, "key-pair") as two,
    ):
        await until(lambda: first.admission.running is not None, 10)
        await until(lambda: second.admission.running is not None, 10)
        sim.set_fault(MODEL, Fault("slow_first_byte", count=2, delay_ms=4_000))
        held_calls = [asyncio.ensure_future(one.post("/infer", json=chat())) for _ in range(2)]
        await until(lambda: sim.open_connections == 2, 10)
        waiting = asyncio.ensure_future(two.post("/infer", json=chat("third")))
        await queued(two, 1)
        runtime_calls = sim.calls[MODEL]
        listed = (await two.get("/queue")).json()["waiting"]
        answer = await waiting  # router one's calls end: router two hears it, lets its go
        first_two = await asyncio.gather(*held_calls)
    assert [a.status_code for a in first_two] == [200, 200]
    assert runtime_calls == 2  # the third never reached the runtime while two ran
    assert listed[0]["tenant"] == "pair"
    assert answer.status_code == 200, answer.text
    assert answer.json()["route"]["queue_ms"] > 0


async def test_an_unreachable_limits_store_admits_and_says_so_once(
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
    nc: NatsClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = shared_limits()
    tenants = [{"name": "pair", "key": "key-pair", "max_concurrent": 2, "rpm": 100}]
    async with (
        slow_fleet(start_worker, node_id, nodes=1, slots=4, latency_ms=20),
        start_router(http={**TENANTS, "api_keys": tenants}, limits=limits) as router,
        client(router, "key-pair") as http,
    ):
        await until(lambda: router.admission.running is not None, 10)
        before = await http.post("/infer", json=chat())
        await nc.jetstream().delete_key_value(limits["bucket"])
        with caplog.at_level(logging.WARNING, logger="inferbus.router.limits"):
            after = [await http.post("/infer", json=chat()) for _ in range(3)]
    assert before.status_code == 200
    assert [a.status_code for a in after] == [200] * 3
    unavailable = [r for r in caplog.records if "max_concurrent store unavailable" in r.message]
    assert len(unavailable) == 1
