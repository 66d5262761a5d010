"""The routers' shared limits bucket on both shipped permission setups (accounts.conf as
committed, and the operator-mode fleet from make_jwt_fleet.py), on a real nats-server
with JetStream: routers with `limits.shared` work within their grants, and a worker's
credentials can neither read, follow nor write the bucket."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest

from router.service import RouterService
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.fleets import Fleet
from tests.jobs import until
from tests.test_shared_store_trust import (
    ROUTERS_STORE,
    Attacker,
    relay_everything,
    sees_nodes,
    worker_block_of_accounts_conf,
)
from tools.simulator import SimModel, Simulator

MODEL = "llama3:8b"
BUCKET = "inferbus_limits"  # the name the committed grants give
KV = f"$KV.{BUCKET}"
TENANTS = [{"name": "pair", "key": "key-pair", "max_concurrent": 1, "rpm": 1000}]


def tenant_hex(name: str) -> str:
    return name.encode().hex()


@contextlib.asynccontextmanager
async def limited_fleet(
    fleet: Fleet,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    runtime: Simulator,
    idempotency: dict[str, Any] | None = None,
) -> AsyncIterator[list[RouterService]]:
    """Two routers with shared limits in the committed bucket (and `idempotency` as their
    idempotency settings), one worker (gpu-a)."""
    http = {"host": "127.0.0.1", "port": 0, "api_keys": TENANTS}
    async with contextlib.AsyncExitStack() as stack:
        routers = [
            await stack.enter_async_context(
                start_router(
                    nats_url=[fleet.url],
                    nats=fleet.auth("router"),
                    http=http,
                    limits={"shared": True, "bucket": BUCKET},
                    idempotency=idempotency or {},
                )
            )
            for _ in range(2)
        ]
        for router in routers:
            await shared_ready(router)
        await stack.enter_async_context(
            start_worker(
                node_id="gpu-a",
                nats_url=[fleet.url],
                nats=fleet.auth("gpu-a"),
                backends=[backend(runtime.url)],
                limits={"llm_concurrency": 4},
            )
        )
        for router in routers:
            await sees_nodes(router, ("gpu-a",))
        yield routers


async def shared_ready(router: RouterService) -> None:
    await until(lambda: router.admission.running is not None, 10)


def body(prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "model": MODEL, "timeout_ms": 20_000}


async def test_routers_share_limits_within_their_grants(
    fleet: Fleet,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Max concurrent 1 across two routers holds only if both read and write the bucket."""
    async with (
        Simulator(models=[SimModel(MODEL)], latency_ms=300) as runtime,
        limited_fleet(fleet, start_worker, start_router, runtime) as routers,
        httpx.AsyncClient(timeout=30, headers={"Authorization": "Bearer key-pair"}) as http,
        await nats.connect(fleet.url, **fleet.auth("ops").connect_options()) as ops,
    ):
        answers = await asyncio.gather(
            *(http.post(f"{routers[n % 2].url}/infer", json=body(f"q{n}")) for n in range(4))
        )
        kv = await ops.jetstream().key_value(BUCKET)
        keys = await kv.keys()
        made = (await ops.jetstream().stream_info(f"KV_{BUCKET}")).config
        running = json.loads((await kv.get(f"running.{tenant_hex('pair')}")).value or b"{}")
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert runtime.peak_connections == 1
    assert made.max_bytes == 64 << 20  # limits.max_bytes, the default
    assert any(key.startswith(f"rpm.{tenant_hex('pair')}.") for key in keys), keys
    assert {holding[0] for holding in running.values()} == {0}  # every call given back
    assert "permissions violation" not in caplog.text.lower()
    assert "store unavailable" not in caplog.text


async def test_a_worker_can_neither_read_nor_write_the_limits_bucket(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        limited_fleet(fleet, start_worker, start_router, runtime) as routers,
        httpx.AsyncClient(timeout=30, headers={"Authorization": "Bearer key-pair"}) as http,
        await nats.connect(fleet.url, **fleet.auth("ops").connect_options()) as ops,
    ):
        first = await http.post(f"{routers[0].url}/infer", json=body("first"))
        kv = await ops.jetstream().key_value(BUCKET)
        key = f"running.{tenant_hex('pair')}"
        kept = (await kv.get(key)).value
        attacker = await Attacker().connect(fleet)
        js = attacker.nc.jetstream(timeout=1)
        seen: list[Any] = []

        async def keep(msg: Any) -> None:
            seen.append(msg)

        await attacker.nc.subscribe(f"{KV}.>", cb=keep)
        await attacker.refused(f'subscription to "{KV}.>"')
        forged = json.dumps({"forger": [1000, 9e12, 1]}).encode()
        await attacker.nc.publish(f"{KV}.{key}", forged)
        await attacker.refused(f'publish to "{KV}.{key}"')
        attempts = {
            "read by direct get": js.get_last_msg(f"KV_{BUCKET}", f"{KV}.{key}", direct=True),
            "read by stream message get": js.get_last_msg(f"KV_{BUCKET}", f"{KV}.{key}"),
            "list (stream info)": js.stream_info(f"KV_{BUCKET}", subjects_filter=">"),
            "list (a consumer)": js.add_consumer(f"KV_{BUCKET}"),
            "write through JetStream": js.publish(f"{KV}.{key}", forged),
            "purge": js.purge_stream(f"KV_{BUCKET}"),
        }
        outcomes: dict[str, object] = {}
        for what, attempt in attempts.items():
            try:
                outcomes[what] = await attempt
            except (nats.errors.Error, TimeoutError) as error:
                outcomes[what] = type(error).__name__
        await attacker.refused(f"$JS.API.DIRECT.GET.KV_{BUCKET}.{KV}.{key}")
        await attacker.refused(f"$JS.API.STREAM.MSG.GET.KV_{BUCKET}")
        again = await http.post(f"{routers[1].url}/infer", json=body("again"))
        after = (await kv.get(key)).value
        await attacker.nc.flush()
        await attacker.nc.close()
    assert first.status_code == 200
    assert all(isinstance(outcome, str) for outcome in outcomes.values()), outcomes
    assert seen == []
    assert b"forger" not in (after or b"")
    assert kept is not None
    assert again.status_code == 200  # the tenant is not blocked by a forged holding


async def test_a_worker_cannot_relay_a_forged_holding_through_jetstreams_answers(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """JetStream answers a request on whatever reply subject the asker names, past the
    asker's publish permissions: gpu-a naming the tenant's running-calls key would write a
    holding there. Its credentials may ask JetStream nothing (tests/test_shared_store_trust.py)."""
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        limited_fleet(fleet, start_worker, start_router, runtime, ROUTERS_STORE) as routers,
        httpx.AsyncClient(timeout=30, headers={"Authorization": "Bearer key-pair"}) as http,
        await nats.connect(fleet.url, **fleet.auth("ops").connect_options()) as ops,
    ):
        await until(lambda: routers[0].gate.shared is not None, timeout_s=10)
        first = await http.post(f"{routers[0].url}/infer", json=body("first"))
        attacker = await Attacker().connect(fleet)
        key = f"running.{tenant_hex('pair')}"
        forged = json.dumps({"forger": [1000, 9e12, 1]}).encode()
        await relay_everything(attacker, f"{KV}.{key}", forged)
        held = (await (await ops.jetstream().key_value(BUCKET)).get(key)).value
        again = await http.post(
            f"{routers[1].url}/infer", json={**body("again"), "timeout_ms": 5_000}
        )
        await attacker.nc.close()
    assert first.status_code == 200
    assert b"forger" not in (held or b"")
    assert again.status_code == 200, again.text  # the tenant is not blocked


@pytest.mark.parametrize("user", ["gpu-a", "gpu-b"])
def test_no_worker_grant_names_the_limits_bucket(user: str) -> None:
    """From the generator the JWT fleet uses, and accounts.conf as committed."""
    ops_nats = Path(__file__).parents[1] / "ops/nats"
    spec = importlib.util.spec_from_file_location("make_jwt_fleet", ops_nats / "make_jwt_fleet.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grants = module.worker_permissions(user)
    assert not [s for s in grants["pub"]["allow"] + grants["sub"]["allow"] if BUCKET in s]
    router = module.router_permissions()
    assert any(BUCKET in s for s in router["pub"]["allow"])
    assert BUCKET not in worker_block_of_accounts_conf(user)
