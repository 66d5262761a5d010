"""The shared idempotency store on both shipped permission setups (accounts.conf as
committed, and the operator-mode fleet from make_jwt_fleet.py), on a real nats-server
with JetStream: the store is the routers' (workers hold no JetStream grant at all), what
routers do with it works within their grants, and whatever gpu-a's credentials try
against what they keep fails, JetStream's answers included (JetStream answers a request
on whatever reply subject the asker names, past the asker's publish permissions, so any
JetStream grant would carry bytes anywhere).

The attacker knows every KV key it aims at (they are hashes of the tenant's key, which a
test can compute): the grants and the routers' seal, not secrecy of names, stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from router.admission.idempotency import scoped_key
from router.admission.tenants import SHARED_SCOPE
from router.service import RouterService
from services.keystore import (
    DEFAULT_BUCKET,
    ROUTER_SPACE,
    PlainRecords,
    Record,
    SharedKeys,
    kv_key,
    worker_space,
)
from services.nats_server import NatsServer
from services.subjects import inbox_prefix
from services.wire import JobResponse, Result, decode_response
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.fleets import OPS_NATS, PASSWORDS, Fleet
from tests.jobs import llm, until
from tests.test_router_idempotency import router_process
from tests.test_worker_lifecycle import start_worker_process
from tools.simulator import SimModel, Simulator

SEAL_KEY = "a7" * 32
ROUTERS_STORE = {"store": "jetstream", "seal_key": SEAL_KEY, "lease_s": 1}
MODEL = "llama3:8b"
KV = f"$KV.{DEFAULT_BUCKET}"
DIRECT_GET = f"$JS.API.DIRECT.GET.KV_{DEFAULT_BUCKET}"


def routers_kv_key(key: str) -> str:
    return kv_key(ROUTER_SPACE, scoped_key(SHARED_SCOPE, key))


def body(prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, "model": MODEL, "timeout_ms": 20_000}


def settings_auth(fleet: Fleet, user: str) -> dict[str, str]:
    """How `user` logs in, as a config file writes it (secrets in clear)."""
    if fleet.creds_dir is not None:
        return {"creds_file": str(fleet.creds_dir / f"{user}.creds")}
    return {"user": user, "password": PASSWORDS[user]}


class Attacker:
    """A connection with gpu-a's credentials and gpu-a's own inboxes, keeping the
    server's permission violations."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = NatsClient()

    async def connect(self, fleet: Fleet) -> Attacker:
        async def remember(error: Exception) -> None:
            self.errors.append(str(error).lower())

        await self.nc.connect(
            fleet.url,
            error_cb=remember,
            inbox_prefix=inbox_prefix("gpu-a"),
            **fleet.auth("gpu-a").connect_options(),
        )
        return self

    async def refused(self, subject: str) -> None:
        """Until the server has said no to `subject` (nats-py lowercases its words)."""
        await until(lambda: any(subject.lower() in error for error in self.errors), 5)


@contextlib.asynccontextmanager
async def store_fleet(
    fleet: Fleet,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    runtime: Simulator,
    routers: int = 2,
    nodes: tuple[str, ...] = ("gpu-a", "gpu-b"),
) -> AsyncIterator[list[RouterService]]:
    """Routers (which make the bucket and keep the shared store), then workers (their own
    idempotency in memory: the shipped setups grant them no JetStream)."""
    async with contextlib.AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(
                start_router(
                    nats_url=[fleet.url], nats=fleet.auth("router"), idempotency=ROUTERS_STORE
                )
            )
            for _ in range(routers)
        ]
        for router in started:
            await store_ready(router)
        for node in nodes:
            worker = await stack.enter_async_context(
                start_worker(
                    node_id=node, nats_url=[fleet.url], nats=fleet.auth(node),
                    backends=[backend(runtime.url)],
                )
            )  # fmt: skip
            assert not worker.pipeline.guarded
        for router in started:
            await sees_nodes(router, nodes)
        yield started


async def store_ready(router: RouterService) -> None:
    await until(lambda: router.gate.shared is not None, timeout_s=10)


async def sees_nodes(router: RouterService, nodes: tuple[str, ...]) -> None:
    view = router.fleet
    assert view is not None
    await until(lambda: set(nodes) <= set(view.nodes), timeout_s=10)


# --- the flows ------------------------------------------------------------------------------


async def test_duplicates_over_two_routers_and_two_workers_reach_one_runtime_call(
    fleet: Fleet,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)], latency_ms=400) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime) as (one, two),
        httpx.AsyncClient(timeout=30) as http,
    ):
        key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
        answers = await asyncio.gather(
            *(
                http.post(f"{router.url}/infer", json=body("once"), headers=key)
                for router in (one, two) * 10
            )
        )
        async with start_router(
            nats_url=[fleet.url], nats=fleet.auth("router"), idempotency=ROUTERS_STORE
        ) as third:  # it never saw the key: the sealed answer in the store
            await store_ready(third)
            later = await http.post(f"{third.url}/infer", json=body("once"), headers=key)
    assert [answer.status_code for answer in answers] == [200] * 20
    assert runtime.calls[MODEL] == 1
    assert len({answer.json()["result"]["text"] for answer in answers}) == 1
    assert later.json()["cached"] is True
    assert later.json()["route"]["attempts"] == []
    assert "permissions violation" not in caplog.text.lower()


async def test_a_key_whose_router_was_killed_runs_through_another_after_the_lease(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory, tmp_path: Path
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)], latency_ms=3_000) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)) as (
            other,
        ),
        router_process(
            tmp_path,
            {
                "nats_url": [fleet.url],
                "nats": settings_auth(fleet, "router"),
                "idempotency": ROUTERS_STORE,
            },
            sees="gpu-b",
        ) as (doomed, doomed_url),
        httpx.AsyncClient(timeout=30) as http,
    ):
        key = {"Idempotency-Key": f"orphan-{uuid.uuid4().hex}"}
        lost = asyncio.create_task(
            http.post(f"{doomed_url}/infer", json=body("orphan"), headers=key)
        )
        await until(lambda: runtime.open_connections == 1, timeout_s=10)
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        killed_at = time.perf_counter()
        answer = await http.post(f"{other.url}/infer", json=body("orphan"), headers=key)
        took_s = time.perf_counter() - killed_at
        with contextlib.suppress(httpx.HTTPError):
            await lost
    print(f"{fleet.setup}: answered through the other router {took_s:.2f} s after the kill")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ok"
    assert runtime.calls[MODEL] == 1  # the node still ran the first: the duplicate joined


# --- the attacks, with gpu-a's credentials ---------------------------------------------------


async def test_gpu_a_can_neither_list_nor_read_what_routers_and_gpu_b_keep(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)) as (
            router,
        ),
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        key = f"secret-{uuid.uuid4().hex}"
        kept = await http.post("/infer", json=body("a secret"), headers={"Idempotency-Key": key})
        attacker = await Attacker().connect(fleet)
        js = attacker.nc.jetstream(timeout=1)
        seen: list[Msg] = []

        async def keep(msg: Msg) -> None:
            seen.append(msg)

        await attacker.nc.subscribe(f"{KV}.>", cb=keep)  # every put, live
        await attacker.refused(f'subscription to "{KV}.>"')
        attempts = {
            "list (stream info with subjects)": js.stream_info(
                f"KV_{DEFAULT_BUCKET}", subjects_filter=">"
            ),
            "list (a consumer)": js.add_consumer(f"KV_{DEFAULT_BUCKET}"),
            "read a router's answer": js.get_last_msg(
                f"KV_{DEFAULT_BUCKET}", f"{KV}.{routers_kv_key(key)}", direct=True
            ),
            "read by stream message get": js.get_last_msg(
                f"KV_{DEFAULT_BUCKET}", f"{KV}.{routers_kv_key(key)}"
            ),
        }
        outcomes: dict[str, object] = {}
        for what, attempt in attempts.items():
            try:
                outcomes[what] = await attempt
            except (nats.errors.Error, TimeoutError) as error:
                outcomes[what] = type(error).__name__
        await attacker.refused(f"{DIRECT_GET}.{KV}.{routers_kv_key(key)}")
        again = await http.post("/infer", json=body("a secret"), headers={"Idempotency-Key": key})
        await attacker.nc.flush()
        await attacker.nc.close()
    assert kept.json()["status"] == "ok"
    assert again.json()["cached"] is True  # the answer is there, kept
    assert all(isinstance(outcome, str) for outcome in outcomes.values()), outcomes
    assert seen == []


async def test_gpu_a_cannot_overwrite_a_kept_answer_nor_wipe_the_bucket(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)) as (
            router,
        ),
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        key = {"Idempotency-Key": f"kept-{uuid.uuid4().hex}"}
        first = (await http.post("/infer", json=body("the truth"), headers=key)).json()
        attacker = await Attacker().connect(fleet)
        planted = planted_record(first, "PLANTED")
        target = f"{KV}.{routers_kv_key(key['Idempotency-Key'])}"
        await attacker.nc.publish(target, planted)
        await attacker.refused(f'publish to "{target}"')
        wipe = f"{KV}.n.gpu-a.kwipe"  # a rollup of the whole stream
        await attacker.nc.publish(wipe, b"{}", headers={"Nats-Rollup": "all"})
        await attacker.refused(f'publish to "{wipe}"')
        # Even credentials that may write there (ops): the bucket allows no rollups.
        async with await nats.connect(fleet.url, **fleet.auth("ops").connect_options()) as ops:
            with pytest.raises(nats.js.errors.APIError):
                await ops.jetstream().publish(wipe, b"{}", headers={"Nats-Rollup": "all"})
        again = (await http.post("/infer", json=body("the truth"), headers=key)).json()
        await attacker.nc.close()
    assert again["cached"] is True
    assert again["result"]["text"] == first["result"]["text"]
    assert "PLANTED" not in json.dumps(again)
    assert runtime.calls[MODEL] == 1


async def test_gpu_a_cannot_forge_a_done_record_over_a_routers_running_claim(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)], latency_ms=1_000) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, nodes=("gpu-b",)) as (one, two),
        httpx.AsyncClient(timeout=30) as http,
    ):
        key = f"claimed-{uuid.uuid4().hex}"
        headers = {"Idempotency-Key": key}
        first = asyncio.create_task(
            http.post(f"{one.url}/infer", json=body("run once"), headers=headers)
        )
        await until(lambda: runtime.open_connections == 1, timeout_s=10)
        attacker = await Attacker().connect(fleet)
        claim = f"{KV}.{routers_kv_key(key)}"
        forged = Record(
            state="done",
            job="anything",
            model=MODEL,
            response=JobResponse(job_id="x", status="ok", result=Result(text="FORGED")),
        )
        await attacker.nc.publish(claim, forged.model_dump_json().encode())
        await attacker.refused(f'publish to "{claim}"')
        await attacker.nc.subscribe(f"{inbox_prefix('gpu-b')}.>")
        await attacker.refused(f'subscription to "{inbox_prefix("gpu-b")}.>"')
        duplicate = (
            await http.post(f"{two.url}/infer", json=body("run once"), headers=headers)
        ).json()
        original = (await first).json()
        await attacker.nc.close()
    assert original["status"] == "ok", original
    assert duplicate["result"]["text"] == original["result"]["text"]
    assert "FORGED" not in json.dumps(duplicate)
    assert runtime.calls[MODEL] == 1


async def test_a_router_never_serves_a_kept_answer_it_cannot_verify(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """With a grant too wide (here the all-powerful ops user), a planted record for a key
    is still never served: it is not sealed with the routers' key, so the key is run."""
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)) as (
            router,
        ),
        await nats.connect(fleet.url, **fleet.auth("ops").connect_options()) as ops,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        key = {"Idempotency-Key": f"fresh-{uuid.uuid4().hex}"}
        planted = planted_record({"result": {"text": ""}, "model": MODEL}, "PLANTED")
        kv = await ops.jetstream().key_value(DEFAULT_BUCKET)
        await kv.put(routers_kv_key(key["Idempotency-Key"]), planted)
        answer = (await http.post("/infer", json=body("fresh"), headers=key)).json()
    assert answer["status"] == "ok"
    assert answer["cached"] is False
    assert "PLANTED" not in answer["result"]["text"]
    assert runtime.calls[MODEL] == 1


# --- JetStream's answers go wherever the asker says: gpu-a may ask JetStream nothing -------
#
# JetStream sends its answer to a request (a direct get, a publish's ack, account info) to
# the reply subject the asker names, from the server's own connection, past the asker's
# publish permissions. The shipped setups grant workers no JetStream subject, so no such
# answer is ever sent for them. Each test below fails if a worker grant came back: the
# refusal it waits for would not come, and the relayed bytes would land.

NOT_GRANTED = [
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    f"$JS.API.STREAM.INFO.KV_{DEFAULT_BUCKET}",
    "$JS.API.STREAM.CREATE.KV_gpu_a",
    f"$JS.API.CONSUMER.CREATE.KV_{DEFAULT_BUCKET}",
    f"{DIRECT_GET}.{KV}.{worker_space('gpu-a')}.kown",
    f"{DIRECT_GET}.{KV}.{ROUTER_SPACE}.kany",
    "$JS.API.DIRECT.GET.KV_inferbus_limits.$KV.inferbus_limits.running.any",
    f"{KV}.{worker_space('gpu-a')}.kown",
    f"{KV}.{ROUTER_SPACE}.kany",
    "$KV.inferbus_limits.running.any",
    "$KV.gpu_a_own_bucket.k",
]


async def test_gpu_a_may_ask_jetstream_nothing_nor_publish_to_any_kv_subject(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)),
    ):
        attacker = await Attacker().connect(fleet)
        inbox = f"{inbox_prefix('gpu-a')}.probe"
        answers = await attacker.nc.subscribe(f"{inbox}.>")
        for n, subject in enumerate(NOT_GRANTED):
            await attacker.nc.publish(subject, b"{}", reply=f"{inbox}.{n}")
        for subject in NOT_GRANTED:
            await attacker.refused(f'publish to "{subject}"')
        await attacker.nc.flush()
        answered = answers.pending_msgs
        still_connected = attacker.nc.is_connected
        await attacker.nc.close()
    assert answered == 0
    assert still_connected  # refused, not cut off


async def relay_everything(attacker: Attacker, to: str, payload: bytes) -> None:
    """gpu-a asks JetStream what the store's worker grants allowed, naming `to` as the
    reply: a put to its own space (its ack), a direct get of that key (the bytes it put),
    account info. Returns once the server has refused each."""
    own = f"{KV}.{worker_space('gpu-a')}.krelay"
    asks = {own: payload, f"{DIRECT_GET}.{own}": b"", "$JS.API.INFO": b""}
    for subject, data in asks.items():
        await attacker.nc.publish(subject, data, reply=to)
    for subject in asks:
        await attacker.refused(f'publish to "{subject}"')
    await attacker.nc.flush()
    await asyncio.sleep(0.5)  # a relayed answer, were one sent, would have landed by now


async def test_gpu_a_cannot_wipe_nor_replace_a_kept_answer_through_jetstreams_answers(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """A router that starts after the answer was kept has only the store to tell it the
    key ran: an ack or planted bytes over the kept answer would make the key run again."""
    key = {"Idempotency-Key": f"kept-{uuid.uuid4().hex}"}
    answers: list[dict[str, Any]] = []
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        httpx.AsyncClient(timeout=30) as http,
    ):
        for attack_first in (False, True):
            if attack_first:
                attacker = await Attacker().connect(fleet)
                planted = planted_record(answers[0], "PLANTED")
                await relay_everything(
                    attacker, f"{KV}.{routers_kv_key(key['Idempotency-Key'])}", planted
                )
                await attacker.nc.close()
            async with store_fleet(
                fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)
            ) as (router,):  # a new router each time
                answer = await http.post(f"{router.url}/infer", json=body("kept"), headers=key)
                assert answer.status_code == 200, answer.text
                answers.append(answer.json())
    first, again = answers
    assert again["cached"] is True
    assert again["result"]["text"] == first["result"]["text"]
    assert runtime.calls[MODEL] == 1


async def test_no_one_announces_as_gpu_b_through_jetstreams_answers(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)) as (
            router,
        ),
        await nats.connect(fleet.url, **fleet.auth("ops").connect_options()) as ops,
    ):
        heard: list[Msg] = []

        async def keep(msg: Msg) -> None:
            heard.append(msg)

        await ops.subscribe("ncs.capabilities.gpu-b", cb=keep)
        await until(lambda: bool(heard), timeout_s=15)  # gpu-b's own heartbeat
        real = json.loads(heard[0].data)
        planted_model = {**real["served_models"][0], "name": "planted:1b"}
        forged = {
            **real,
            "seq": real["seq"] + 1_000,
            "served_models": [*real["served_models"], planted_model],
        }
        attacker = await Attacker().connect(fleet)
        await relay_everything(attacker, "ncs.capabilities.gpu-b", json.dumps(forged).encode())
        await ops.flush()
        from_gpu_a = [msg for msg in heard if msg.headers]  # what JetStream handed out
        # A router's credentials do hold JetStream grants (the routers' space): the same
        # relay from them is delivered, and routers refuse it by JetStream's headers.
        view = router.fleet
        assert view is not None
        refused_before = view.refusals.refused
        async with await nats.connect(
            fleet.url, **fleet.auth("router").connect_options()
        ) as as_router:
            own = f"{KV}.{ROUTER_SPACE}.kannounce"
            await as_router.jetstream().publish(own, json.dumps(forged).encode())
            await as_router.publish(f"{DIRECT_GET}.{own}", b"", reply="ncs.capabilities.gpu-b")
            await until(lambda: any(msg.headers for msg in heard), timeout_s=5)
            await until(lambda: view.refusals.refused > refused_before, timeout_s=5)
        models = [model.name for model in view.nodes["gpu-b"].record.served_models]
        await attacker.nc.close()
    assert from_gpu_a == []
    assert "planted:1b" not in models


def planted_record(answer: dict[str, Any], text: str) -> bytes:
    """A done record as an attacker would write it, for the same job and model."""
    forged = JobResponse(
        job_id="x", status="ok", model=answer.get("model") or MODEL, result=Result(text=text)
    )
    return Record(state="done", job="same", model=MODEL, response=forged).model_dump_json().encode()


def worker_grants_of_the_jwt_fleet(user: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("make_jwt_fleet", OPS_NATS / "make_jwt_fleet.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grants = module.worker_permissions(user)
    return [*grants["pub"]["allow"], *grants["sub"]["allow"]]


def worker_block_of_accounts_conf(user: str) -> str:
    conf = (OPS_NATS / "accounts.conf").read_text()
    start = conf.index(f"user: {user}\n")  # the user's block, not the comments' example
    return conf[start : conf.index("allow_responses", start)]


@pytest.mark.parametrize("user", ["gpu-a", "gpu-b"])
def test_no_worker_user_holds_a_jetstream_grant(user: str) -> None:
    """The generator the JWT fleet uses, and accounts.conf as committed: no `$JS` nor `$KV`
    subject, and of the inboxes only the node's own."""
    grants = worker_grants_of_the_jwt_fleet(user)
    assert [s for s in grants if s.startswith(("$JS", "$KV"))] == []
    assert [s for s in grants if "INBOX" in s] == [f"_INBOX_{user}.>"]
    block = worker_block_of_accounts_conf(user)
    assert "$JS" not in block
    assert "$KV" not in block


# --- start-up: what is missing is named, exit 2 ----------------------------------------------

NO_STORE_GRANT = """
accounts {
  FLEET {
    jetstream: enabled
    users: [{user: gpu-x, password: pw, permissions: {
      subscribe: ["node.gpu-x.>", "ncs.discover", "$SRV.>", "ncs.capabilities.gpu-x"]
      publish: ["ncs.capabilities.gpu-x"]
      allow_responses: true
    }}]
  }
}
"""
NO_ACCOUNT_JETSTREAM = """
accounts { FLEET { users: [{user: gpu-x, password: pw}] } }
"""


async def refused_start(config: Path) -> str:
    """Start a worker that must refuse to: exit 2, no traceback; its last line of stderr."""
    process = await start_worker_process(config)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    said = stderr.decode()
    print(said)
    assert process.returncode == 2
    assert "Traceback" not in said
    return said.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("server_config", "jetstream", "missing"),
    [
        pytest.param(None, False, ["JetStream is not enabled on the NATS server"], id="js-off"),
        pytest.param(
            NO_ACCOUNT_JETSTREAM,
            True,
            ["JetStream refused this account: JetStream not enabled for account"],
            id="account-js-off",
        ),
        pytest.param(
            NO_STORE_GRANT,
            True,
            [
                "not granted to this node's NATS user (",
                'permissions violation for subscription to "_inbox_gpu-x.',
                'permissions violation for publish to "$js.api.info"',
                "the shared store is the routers'",
            ],
            id="no-grants",
        ),
    ],
)
async def test_a_worker_whose_store_cannot_start_exits_2_naming_what_is_missing(
    tmp_path: Path, server_config: str | None, jetstream: bool, missing: list[str]
) -> None:
    config = None
    if server_config is not None:
        config = tmp_path / "server.conf"
        config.write_text(server_config)
    login = 'user = "gpu-x"\npassword = "pw"\n' if server_config is not None else ""
    worker_config = tmp_path / "worker.toml"
    async with NatsServer(
        config_file=config, jetstream_dir=tmp_path / "js" if jetstream else None
    ) as server:
        worker_config.write_text(
            f'node_id = "gpu-x"\nnats_url = ["{server.url}"]\n[nats]\n{login}'
            '[idempotency]\nstore = "jetstream"\n'
        )
        last = await refused_start(worker_config)
    assert last.startswith("inferbus worker: idempotency store: ")
    assert all(part in last for part in missing), last


async def test_a_worker_given_the_store_on_a_shipped_setup_exits_2_saying_it_is_the_routers(
    fleet: Fleet, tmp_path: Path
) -> None:
    login = "".join(
        f'{name} = "{value}"\n' for name, value in settings_auth(fleet, "gpu-a").items()
    )
    worker_config = tmp_path / "worker.toml"
    worker_config.write_text(
        f'node_id = "gpu-a"\nnats_url = ["{fleet.url}"]\n[nats]\n{login}'
        '[idempotency]\nstore = "jetstream"\n'
    )
    last = await refused_start(worker_config)
    assert last == (
        "inferbus worker: idempotency store: not granted to this node's NATS user "
        '(nats: permissions violation for publish to "$js.api.info"): on this setup the '
        'shared store is the routers\' (idempotency.store = "jetstream" in the router '
        'config); set idempotency.store = "memory" on this worker'
    )


# --- where an operator grants workers the store itself ---------------------------------------

STORE_GRANTED = """
accounts {
  FLEET {
    jetstream: enabled
    users: [
      {user: gpu-x, password: pw, permissions: {
        subscribe: ["node.gpu-x.>", "ncs.discover", "$SRV.>", "ncs.capabilities.gpu-x",
                    "_INBOX_gpu-x.>"]
        publish: [
          "ncs.capabilities.gpu-x"
          "$JS.API.INFO"
          "$KV.inferbus_idempotency.n.gpu-x.>"
          "$JS.API.DIRECT.GET.KV_inferbus_idempotency.$KV.inferbus_idempotency.n.gpu-x.>"
        ]
        allow_responses: {max: 100000, expires: "15m"}
      }}
      {user: boss, password: pw}
    ]
  }
}
"""


async def test_a_worker_granted_the_store_runs_it_and_its_grant_relays_anywhere(
    tmp_path: Path, start_worker: WorkerFactory
) -> None:
    """The grants ops/nats/README.md names for it: the worker keeps and replays its own
    answers across a restart; and the same grants let its credentials have JetStream put
    bytes on a subject they may not publish to (the relay the README warns of)."""
    config = tmp_path / "server.conf"
    config.write_text(STORE_GRANTED)
    worker_auth = {"user": "gpu-x", "password": "pw"}
    async with (
        NatsServer(config_file=config, jetstream_dir=tmp_path / "js") as server,
        Simulator(models=[SimModel(MODEL)]) as runtime,
        await nats.connect(server.url, user="boss", password="pw") as boss,
    ):
        await SharedKeys.make(
            boss, bucket=DEFAULT_BUCKET, ttl_s=600, space=ROUTER_SPACE, codec=PlainRecords()
        )
        job = json.dumps({**body("kept by gpu-x"), "idempotency_key": uuid.uuid4().hex}).encode()
        answers = []
        for _ in range(2):  # a new gpu-x process each time
            async with start_worker(
                node_id="gpu-x", nats_url=[server.url], nats=worker_auth,
                backends=[backend(runtime.url)], idempotency={"store": "jetstream"},
            ) as worker:  # fmt: skip
                assert worker.pipeline.guarded
                reply = await boss.request(llm("gpu-x"), job, timeout=15)
                answers.append(decode_response(reply.data))
        relayed = await boss.subscribe("anywhere.gpu-x")
        await boss.flush()
        attacker = NatsClient()
        errors: list[str] = []

        async def remember(error: Exception) -> None:
            errors.append(str(error).lower())

        await attacker.connect(
            server.url,
            error_cb=remember,
            inbox_prefix=inbox_prefix("gpu-x"),
            user="gpu-x",
            password="pw",
        )
        await attacker.publish("anywhere.gpu-x", b"refused")
        await until(lambda: any('publish to "anywhere.gpu-x"' in error for error in errors), 5)
        await attacker.publish("$JS.API.INFO", b"", reply="anywhere.gpu-x")
        delivered = await relayed.next_msg(timeout=5)
        await attacker.close()
    first, again = answers
    assert first.status == "ok", first.error
    assert again.cached is True
    assert again.result == first.result
    assert runtime.calls[MODEL] == 1
    assert b"refused" not in delivered.data
    assert json.loads(delivered.data)["type"] == "io.nats.jetstream.api.v1.account_info_response"
