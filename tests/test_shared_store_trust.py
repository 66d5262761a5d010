"""The shared idempotency store on both shipped permission setups (accounts.conf as
committed, and the operator-mode fleet from make_jwt_fleet.py), on a real nats-server
with JetStream: what routers and workers do with it works within their grants, and
whatever gpu-a's credentials try against what others keep fails.

The attacker knows every KV key it aims at (they are hashes of the tenant's key, which a
test can compute): the grants and the routers' seal, not secrecy of names, stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from services.keystore import DEFAULT_BUCKET, ROUTER_SPACE, Record, kv_key, worker_space
from services.nats_server import NatsServer
from services.subjects import inbox_prefix
from services.wire import JobRequest, JobResponse, Result, decode_request, decode_response
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.fleets import PASSWORDS, Fleet
from tests.jobs import llm, until
from tests.test_router_idempotency import router_process
from tests.test_worker_lifecycle import start_worker_process
from tools.simulator import SimModel, Simulator

SEAL_KEY = "a7" * 32
ROUTERS_STORE = {"store": "jetstream", "seal_key": SEAL_KEY, "lease_s": 1}
WORKERS_STORE = {"store": "jetstream"}
MODEL = "llama3:8b"
KV = f"$KV.{DEFAULT_BUCKET}"
DIRECT_GET = f"$JS.API.DIRECT.GET.KV_{DEFAULT_BUCKET}"


def routers_kv_key(key: str) -> str:
    return kv_key(ROUTER_SPACE, scoped_key(SHARED_SCOPE, key))


def nodes_kv_key(node: str, key: str) -> str:
    return kv_key(worker_space(node), scoped_key(SHARED_SCOPE, key))


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
    """Routers (which make the bucket), then workers, all with the shared store."""
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
                    backends=[backend(runtime.url)], idempotency=WORKERS_STORE,
                )
            )  # fmt: skip
            assert worker.pipeline.guarded
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


async def test_a_restarted_worker_replays_what_it_sealed_before(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """gpu-b's records are sealed with a key from its credentials: the next gpu-b process,
    with the same credentials, opens them."""
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        await nats.connect(fleet.url, **fleet.auth("router").connect_options()) as as_router,
    ):
        job = json.dumps({**body("kept by gpu-b"), "idempotency_key": uuid.uuid4().hex}).encode()
        answers = []
        for _ in range(2):  # a new gpu-b process each time
            async with store_fleet(
                fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)
            ):
                reply = await as_router.request(llm("gpu-b"), job, timeout=15)
                answers.append(decode_response(reply.data))
    first, again = answers
    assert first.status == "ok", first.error
    assert again.cached is True
    assert again.result == first.result
    assert runtime.calls[MODEL] == 1


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
            "read gpu-b's answer": js.get_last_msg(
                f"KV_{DEFAULT_BUCKET}", f"{KV}.{nodes_kv_key('gpu-b', key)}", direct=True
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
        await attacker.refused(f"{DIRECT_GET}.{KV}.{nodes_kv_key('gpu-b', key)}")
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
        # Its own space, with a rollup of the whole stream: the bucket allows no rollups.
        js = attacker.nc.jetstream(timeout=2)
        with pytest.raises(nats.js.errors.APIError):
            await js.publish(f"{KV}.n.gpu-a.kwipe", b"{}", headers={"Nats-Rollup": "all"})
        again = (await http.post("/infer", json=body("the truth"), headers=key)).json()
        await attacker.nc.close()
    assert again["cached"] is True
    assert again["result"]["text"] == first["result"]["text"]
    assert "PLANTED" not in json.dumps(again)
    assert runtime.calls[MODEL] == 1


async def test_gpu_a_cannot_forge_a_done_record_over_gpu_bs_running_claim(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)], latency_ms=1_000) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)),
        await nats.connect(fleet.url, **fleet.auth("router").connect_options()) as as_router,
    ):
        key = f"claimed-{uuid.uuid4().hex}"
        job = json.dumps({**body("run by gpu-b"), "idempotency_key": key}).encode()
        first = asyncio.create_task(as_router.request(llm("gpu-b"), job, timeout=15))
        await until(lambda: runtime.open_connections == 1, timeout_s=10)
        attacker = await Attacker().connect(fleet)
        claim = f"{KV}.{kv_key(worker_space('gpu-b'), key)}"
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
        original = decode_response((await first).data)
        duplicate = decode_response((await as_router.request(llm("gpu-b"), job, timeout=15)).data)
        await attacker.nc.close()
    assert original.status == "ok", original.error
    assert duplicate.cached is True
    assert duplicate.result == original.result
    assert duplicate.result is not None
    assert duplicate.result.text != "FORGED"


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


# --- JetStream's answers go to whatever reply subject the asker names ----------------------
#
# The server sends them from its own connection, past the asker's publish permissions: with
# a direct get on its own space, gpu-a has a value it wrote there delivered on any subject
# of the account (ncs.capabilities.gpu-b, a job
# subject, another space of the bucket, the limits bucket).


def relay(attacker: Attacker, own_key: str, to: str) -> Any:
    """gpu-a asks for its own key, naming `to` as the reply subject."""
    return attacker.nc.publish(
        f"{DIRECT_GET}.{KV}.{worker_space('gpu-a')}.{own_key}", b"", reply=to
    )


async def test_gpu_a_cannot_announce_as_gpu_b_through_jetstreams_answers(
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
        js = attacker.nc.jetstream(timeout=2)
        await js.publish(f"{KV}.{worker_space('gpu-a')}.kannounce", json.dumps(forged).encode())
        view = router.fleet
        assert view is not None
        refused_before = view.refusals.refused
        await relay(attacker, "kannounce", "ncs.capabilities.gpu-b")
        await attacker.nc.flush()
        await until(lambda: any(msg.headers for msg in heard), timeout_s=5)  # it was relayed
        await until(lambda: view.refusals.refused > refused_before, timeout_s=5)
        models = [model.name for model in view.nodes["gpu-b"].record.served_models]
        await attacker.nc.close()
    assert "planted:1b" not in models
    assert attacker.errors == []  # the server let every step through


async def test_gpu_a_cannot_plant_an_answer_in_gpu_bs_space_through_jetstreams_answers(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        store_fleet(fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)),
        await nats.connect(fleet.url, **fleet.auth("router").connect_options()) as as_router,
    ):
        key = f"planted-{uuid.uuid4().hex}"
        job = json.dumps({**body("for gpu-b"), "idempotency_key": key}).encode()
        request = decode_request(job, default_type="llm")
        assert isinstance(request, JobRequest)
        forged = Record(
            state="done",
            job=request.fingerprint(),
            model=MODEL,
            response=JobResponse(job_id="x", status="ok", result=Result(text="PLANTED")),
        )
        attacker = await Attacker().connect(fleet)
        js = attacker.nc.jetstream(timeout=2)
        await js.publish(f"{KV}.{worker_space('gpu-a')}.kplant", forged.model_dump_json().encode())
        await relay(attacker, "kplant", f"{KV}.{kv_key(worker_space('gpu-b'), key)}")
        await attacker.nc.flush()
        await asyncio.sleep(0.5)
        answer = decode_response((await as_router.request(llm("gpu-b"), job, timeout=15)).data)
        await attacker.nc.close()
    assert answer.status == "ok", answer.error
    assert answer.result is not None
    assert answer.result.text != "PLANTED"
    assert runtime.calls[MODEL] == 1


@pytest.mark.xfail(
    strict=True,
    reason="open: JetStream's answer to any request of gpu-a (here its own put's ack) lands "
    "on a kept answer (the routers' and gpu-b's copies) when gpu-a names its key as the reply",
)
async def test_gpu_a_cannot_wipe_a_kept_answer_through_jetstreams_answers(
    fleet: Fleet, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """Processes that start after the answer was kept (a new router, gpu-b restarted) have
    only the store to tell them the key ran."""
    key = {"Idempotency-Key": f"kept-{uuid.uuid4().hex}"}
    async with (
        Simulator(models=[SimModel(MODEL)]) as runtime,
        httpx.AsyncClient(timeout=30) as http,
    ):
        for wipe_first in (False, True):
            if wipe_first:
                attacker = await Attacker().connect(fleet)
                kept = (
                    routers_kv_key(key["Idempotency-Key"]),
                    nodes_kv_key("gpu-b", key["Idempotency-Key"]),
                )
                for kv_key_name in kept:
                    own = f"{KV}.{worker_space('gpu-a')}.kack"
                    await attacker.nc.publish(own, b"{}", reply=f"{KV}.{kv_key_name}")
                await attacker.nc.flush()
                await attacker.nc.close()
                await asyncio.sleep(0.5)
            async with store_fleet(
                fleet, start_worker, start_router, runtime, routers=1, nodes=("gpu-b",)
            ) as (router,):
                answer = await http.post(f"{router.url}/infer", json=body("kept"), headers=key)
                assert answer.status_code == 200, answer.text
    assert runtime.calls[MODEL] == 1


def planted_record(answer: dict[str, Any], text: str) -> bytes:
    """A done record as an attacker would write it, for the same job and model."""
    forged = JobResponse(
        job_id="x", status="ok", model=answer.get("model") or MODEL, result=Result(text=text)
    )
    return Record(state="done", job="same", model=MODEL, response=forged).model_dump_json().encode()


async def test_gpu_a_credentials_hold_no_other_store_grant() -> None:
    """What the worker's grants name, checked from the generator the JWT fleet uses: its
    own space and inboxes, and account info; nothing of the routers' nor gpu-b's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_jwt_fleet", Path(__file__).parents[1] / "ops/nats/make_jwt_fleet.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grants = module.worker_permissions("gpu-a")
    published = [s for s in grants["pub"]["allow"] if s.startswith("$")]
    assert published == [
        "$JS.API.INFO",
        f"{KV}.n.gpu-a.>",
        f"{DIRECT_GET}.{KV}.n.gpu-a.>",
    ]
    assert [s for s in grants["sub"]["allow"] if "INBOX" in s] == ["_INBOX_gpu-a.>"]


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
                "NATS refused a grant the idempotency store needs: ",
                'permissions violation for subscription to "_inbox_gpu-x.',
                'permissions violation for publish to "$js.api.info"',
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
        process = await start_worker_process(worker_config)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    last = stderr.decode().strip().splitlines()[-1]
    print(last)
    assert process.returncode == 2
    assert last.startswith("inferbus worker: idempotency store: ")
    assert all(part in last for part in missing), last
    assert "Traceback" not in stderr.decode()
