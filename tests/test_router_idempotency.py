"""One runtime call per idempotency key through the router.

Real processes: nats-server with JetStream, workers in front of the simulator (whose
per-model call counts are the runtime calls), routers over HTTP, and for the SIGKILL case
a worker in a process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from router.config import RouterSettings
from router.service import RouterService
from services.bus import wait_for_worker
from services.localnet import free_port
from services.nats_server import NatsServer
from services.wire import decode_response
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import llm, until
from tests.test_worker_lifecycle import start_worker_process
from tests.test_worker_openai_features import ASK_WEATHER, MODELS, TOOL_MODEL, WEATHER_TOOL
from tools.simulator import SimModel, Simulator

ROOT = Path(__file__).resolve().parents[1]

SHARED = {"store": "jetstream"}  # a worker's
SEAL_KEY = "5e" * 32
ROUTERS_SHARED = {"store": "jetstream", "seal_key": SEAL_KEY, "lease_s": 1}


def job(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "timeout_ms": 20_000, **extra}


@asynccontextmanager
async def fleet(
    start_worker: WorkerFactory,
    node_id: str,
    url: str,
    count: int = 3,
    **settings: Any,
) -> AsyncIterator[list[str]]:
    """`count` workers in front of one runtime: every runtime call lands in one count."""
    names = [f"{node_id}-{index}" for index in range(count)]
    async with AsyncExitStack() as stack:
        for name in names:
            await stack.enter_async_context(
                start_worker(node_id=name, backends=[backend(url)], **settings)
            )
        yield names


async def sees(router: RouterService, nodes: list[str]) -> None:
    assert router.fleet is not None
    fleet_view = router.fleet
    await until(lambda: set(nodes) <= set(fleet_view.nodes), timeout_s=10)


def ndjson(body: str) -> tuple[list[str], dict[str, Any]]:
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    return [line["delta"] for line in lines[:-1]], lines[-1]


async def test_concurrent_duplicates_through_one_router_make_one_runtime_call(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("llama3:8b")], latency_ms=300) as sim,
        fleet(start_worker, node_id, sim.url) as nodes,
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        await sees(router, nodes)
        key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
        answers = await asyncio.gather(
            *(http.post("/infer", json=job("summarise the order"), headers=key) for _ in range(20))
        )
    bodies = [answer.json() for answer in answers]
    assert [answer.status_code for answer in answers] == [200] * 20
    assert sim.calls["llama3:8b"] == 1
    assert len({body["result"]["text"] for body in bodies}) == 1
    assert sum(body["cached"] for body in bodies) == 19


async def test_sequential_duplicates_with_other_traffic_between_make_one_runtime_call(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("llama3:8b")]) as sim,
        fleet(start_worker, node_id, sim.url) as nodes,
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        await sees(router, nodes)
        key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
        keyed: list[dict[str, Any]] = []
        for round_ in range(8):
            keyed.append((await http.post("/infer", json=job("the order"), headers=key)).json())
            for other in range(3):
                unkeyed = await http.post("/infer", json=job(f"other {round_}.{other}"))
                assert unkeyed.status_code == 200
    assert sim.calls["llama3:8b"] == 1 + 8 * 3
    assert [body["status"] for body in keyed] == ["ok"] * 8
    assert [body["cached"] for body in keyed] == [False] + [True] * 7


async def test_a_key_replays_as_a_stream_and_as_a_whole_answer_instead_of_422(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        await sees(router, [node_id])
        whole_key = {"Idempotency-Key": f"w-{uuid.uuid4().hex}"}
        whole = (await http.post("/infer", json=job("hello"), headers=whole_key)).json()
        streamed = await http.post("/infer", json=job("hello", stream=True), headers=whole_key)
        stream_key = {"Idempotency-Key": f"s-{uuid.uuid4().hex}"}
        first = await http.post("/infer", json=job("again", stream=True), headers=stream_key)
        again = await http.post("/infer", json=job("again"), headers=stream_key)
        openai_stream = await http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "again"}], "stream": True},
            headers=stream_key,
        )
    assert simulator.calls["llama3:8b"] == 2
    deltas, final = ndjson(streamed.text)
    assert streamed.status_code == 200
    assert deltas == [whole["result"]["text"]]  # one chunk with the whole text
    assert final["cached"] is True
    first_deltas, first_final = ndjson(first.text)
    assert len(first_deltas) > 1
    assert again.status_code == 200
    assert again.json()["cached"] is True
    assert again.json()["result"]["text"] == "".join(first_deltas) == first_final["result"]["text"]
    events = [line[6:] for line in openai_stream.text.splitlines() if line.startswith("data: ")]
    contents = [
        json.loads(event)["choices"][0]["delta"].get("content")
        for event in events[:-1]
        if json.loads(event)["choices"]
    ]
    assert openai_stream.status_code == 200
    assert contents[0] == first_final["result"]["text"]
    assert events[-1] == "[DONE]"


async def test_model_omitted_or_named_is_the_same_job_when_it_resolves_the_same(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    models = [
        SimModel("llama3:8b", size_bytes=4_700_000_000),
        SimModel("tinyllama:1b", size_bytes=600_000_000),
    ]
    async with (
        Simulator(models=models) as sim,
        start_worker(backends=[backend(sim.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        await sees(router, [node_id])
        key = {"Idempotency-Key": f"m-{uuid.uuid4().hex}"}
        named = await http.post("/infer", json=job("hi", model="llama3:8b"), headers=key)
        omitted = await http.post("/infer", json=job("hi"), headers=key)
        other = await http.post("/infer", json=job("hi", model="tinyllama:1b"), headers=key)
        changed = await http.post("/infer", json=job("hi there", model="llama3:8b"), headers=key)
    assert named.json()["model"] == "llama3:8b"  # the larger model is the default too
    assert omitted.status_code == 200
    assert omitted.json()["cached"] is True
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "IDEMPOTENCY_MISMATCH"
    assert changed.status_code == 422
    assert sim.calls == {"llama3:8b": 1}


async def test_keys_are_scoped_per_tenant(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router(http={"host": "127.0.0.1", "port": 0, "api_keys": ["key-a", "key-b"]}) as r,
        httpx.AsyncClient(base_url=r.url, timeout=30) as http,
    ):
        await sees(r, [node_id])
        key = f"k-{uuid.uuid4().hex}"

        async def ask(api_key: str, prompt: str) -> httpx.Response:
            headers = {"Idempotency-Key": key, "Authorization": f"Bearer {api_key}"}
            return await http.post("/infer", json=job(prompt), headers=headers)

        tenant_a = await ask("key-a", "the same words")
        tenant_b = await ask("key-b", "other words, same key")
        tenant_a_again = await ask("key-a", "the same words")
    assert tenant_a.json()["cached"] is False
    assert tenant_b.status_code == 200  # not IDEMPOTENCY_MISMATCH: another tenant's key
    assert tenant_b.json()["cached"] is False
    assert tenant_a_again.json()["cached"] is True
    assert simulator.calls["llama3:8b"] == 2


async def test_two_clients_with_the_same_job_id_do_not_collide(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("llama3:8b")], latency_ms=200) as sim,
        start_worker(backends=[backend(sim.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        await sees(router, [node_id])
        concurrent = await asyncio.gather(
            http.post("/infer", json=job("from client one", job_id="1")),
            http.post("/infer", json=job("from client two", job_id="1")),
        )
        later = await http.post("/infer", json=job("from client three", job_id="1"))
    answers = [*concurrent, later]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [answer.json()["job_id"] for answer in answers] == ["1", "1", "1"]
    assert [answer.json()["cached"] for answer in answers] == [False, False, False]
    assert sim.calls["llama3:8b"] == 3


async def test_two_routers_sharing_the_jetstream_store_make_one_runtime_call(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("llama3:8b")], latency_ms=400) as sim,
        fleet(start_worker, node_id, sim.url, idempotency=SHARED) as nodes,
        start_router(idempotency=ROUTERS_SHARED) as one,
        start_router(idempotency=ROUTERS_SHARED) as two,
        httpx.AsyncClient(timeout=30) as http,
    ):
        await sees(one, nodes)
        await sees(two, nodes)
        key = {"Idempotency-Key": f"x-{uuid.uuid4().hex}"}
        concurrent = await asyncio.gather(
            *(
                http.post(f"{router.url}/infer", json=job("once across routers"), headers=key)
                for router in (one, two) * 5
            )
        )
        calls_after_concurrent = sim.calls["llama3:8b"]
        later = await http.post(f"{two.url}/infer", json=job("once across routers"), headers=key)
        async with start_router(idempotency=ROUTERS_SHARED) as third:  # it never saw the key
            fresh = await http.post(
                f"{third.url}/infer", json=job("once across routers"), headers=key
            )
    assert [answer.status_code for answer in concurrent] == [200] * 10
    assert calls_after_concurrent == 1
    assert later.json()["cached"] is True
    assert fresh.json()["cached"] is True
    assert fresh.json()["route"]["attempts"] == []  # replayed from the store: no node asked
    assert sim.calls["llama3:8b"] == 1


async def test_a_key_held_by_a_killed_process_of_a_node_is_run_by_another_after_its_lease(
    nats_server: NatsServer,
    nc: NatsClient,
    start_worker: WorkerFactory,
    node_id: str,
    tmp_path: Path,
) -> None:
    """Two processes of one node (its space of the store is theirs; here each on a subject
    prefix of its own, so the test chooses which one a job reaches): the retry waits while
    the doomed process's lease lives, then runs."""
    async with (
        Simulator(models=[SimModel("llama3:8b")], latency_ms=30_000) as doomed_runtime,
        Simulator(models=[SimModel("llama3:8b")]) as other_runtime,
        worker_process(nc, nats_server, node_id, doomed_runtime.url, tmp_path, prefix="a")
        as doomed,
        start_worker(backends=[backend(other_runtime.url)], subject_prefix="b", replicas=True,
                     idempotency={**SHARED, "lease_s": 1}) as other,
    ):  # fmt: skip
        key = f"kill-{uuid.uuid4().hex}"
        payload = json.dumps(job("run me once", idempotency_key=key)).encode()
        await nc.publish(f"a.{llm(node_id)}", payload, reply=nc.new_inbox())
        await until(lambda: doomed_runtime.open_connections == 1, timeout_s=10)
        retry = asyncio.create_task(nc.request(f"b.{llm(node_id)}", payload, timeout=15))
        # The retry holds its slot but waits: the doomed process's claim is alive.
        await until(lambda: other.admission.load()["llm"].inflight == 1)
        calls_while_claimed = other_runtime.calls["llama3:8b"]
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        killed_at = time.perf_counter()
        answer = decode_response((await retry).data)
        moved_s = time.perf_counter() - killed_at
    print(f"the retry ran {moved_s:.2f} s after the SIGKILL (lease 1 s)")
    assert calls_while_claimed == 0
    assert answer.status == "ok", answer.error
    assert answer.cached is False
    assert other_runtime.calls["llama3:8b"] == 1


async def test_a_duplicate_on_another_process_of_the_node_waits_for_the_claims_answer(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    shared = {"idempotency": SHARED, "replicas": True}
    async with (
        Simulator(models=[SimModel("llama3:8b")], latency_ms=300) as first_runtime,
        Simulator(models=[SimModel("llama3:8b")]) as second_runtime,
        start_worker(backends=[backend(first_runtime.url)], subject_prefix="a", **shared),
        start_worker(backends=[backend(second_runtime.url)], subject_prefix="b", **shared),
    ):
        key = f"wait-{uuid.uuid4().hex}"
        payload = json.dumps(job("one call", idempotency_key=key)).encode()
        first = asyncio.create_task(nc.request(f"a.{llm(node_id)}", payload, timeout=15))
        await until(lambda: first_runtime.open_connections == 1)
        duplicate = decode_response((await nc.request(f"b.{llm(node_id)}", payload, 15)).data)
        original = decode_response((await first).data)
        mismatch_payload = json.dumps(job("other job", idempotency_key=key)).encode()
        mismatch = decode_response(
            (await nc.request(f"b.{llm(node_id)}", mismatch_payload, timeout=15)).data
        )
    assert original.status == "ok"
    assert duplicate.cached is True
    assert duplicate.result == original.result
    assert second_runtime.calls["llama3:8b"] == 0
    assert mismatch.error is not None
    assert mismatch.error.code == "IDEMPOTENCY_MISMATCH"


async def test_another_nodes_claims_are_not_its_own(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    """Each node claims keys in its own space: across nodes, routers keep a key to one
    call (above); a node reached directly knows only its own claims."""
    async with (
        Simulator(models=[SimModel("llama3:8b")], latency_ms=300) as first_runtime,
        Simulator(models=[SimModel("llama3:8b")]) as second_runtime,
        start_worker(node_id=f"{node_id}-1", backends=[backend(first_runtime.url)],
                     idempotency=SHARED),
        start_worker(node_id=f"{node_id}-2", backends=[backend(second_runtime.url)],
                     idempotency=SHARED),
    ):  # fmt: skip
        payload = json.dumps(job("one call", idempotency_key=uuid.uuid4().hex)).encode()
        first = asyncio.create_task(nc.request(llm(f"{node_id}-1"), payload, timeout=15))
        await until(lambda: first_runtime.open_connections == 1)
        other = decode_response((await nc.request(llm(f"{node_id}-2"), payload, 15)).data)
        await first
    assert (other.status, other.cached) == ("ok", False)
    assert second_runtime.calls["llama3:8b"] == 1


@asynccontextmanager
async def worker_process(
    nc: NatsClient,
    nats_server: NatsServer,
    node_id: str,
    runtime_url: str,
    tmp_path: Path,
    prefix: str = "",
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A worker in a process of its own (shared store, 1 s lease), ready to take jobs."""
    config = tmp_path / f"{node_id}.toml"
    config.write_text(
        f'node_id = "{node_id}"\n'
        f'nats_url = ["{nats_server.url}"]\n'
        f'subject_prefix = "{prefix}"\n'
        "replicas = true\n"
        "[idempotency]\n"
        'store = "jetstream"\n'
        "lease_s = 1\n"
        "[[backends]]\n"
        'kind = "ollama"\n'
        f'url = "{runtime_url}"\n'
    )
    process = await start_worker_process(config)
    try:
        await wait_for_worker(nc, f"{prefix}.{llm(node_id)}" if prefix else llm(node_id))
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_an_answered_key_replays_after_the_worker_restarts(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    payload = json.dumps(job("kept across restarts", idempotency_key=uuid.uuid4().hex)).encode()
    async with start_worker(backends=[backend(simulator.url)], idempotency=SHARED):
        before = decode_response((await nc.request(llm(node_id), payload, timeout=15)).data)
    async with start_worker(backends=[backend(simulator.url)], idempotency=SHARED):
        after = decode_response((await nc.request(llm(node_id), payload, timeout=15)).data)
    assert before.status == "ok"
    assert after.cached is True
    assert after.result == before.result
    assert simulator.calls["llama3:8b"] == 1


async def test_an_answer_from_the_shared_store_replays_its_tool_calls_to_a_stream(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """A restarted worker finds the answer in the shared store only: it replays the tool
    calls as stream chunks, not only in the final answer."""
    ask = {
        "model": TOOL_MODEL,
        "messages": [{"role": "user", "content": ASK_WEATHER}],
        "tools": [WEATHER_TOOL],
    }
    key = {"Idempotency-Key": f"tools-{uuid.uuid4().hex}"}
    async with Simulator(models=list(MODELS)) as sim:
        async with (
            start_worker(backends=[backend(sim.url)], idempotency=SHARED),
            start_router() as first,
            httpx.AsyncClient(base_url=first.url, timeout=30) as http,
        ):
            await sees(first, [node_id])
            whole = (await http.post("/v1/chat/completions", json=ask, headers=key)).json()
        async with (
            start_worker(backends=[backend(sim.url)], idempotency=SHARED),
            start_router() as second,  # its own memory never saw the key
            httpx.AsyncClient(base_url=second.url, timeout=30) as http,
        ):
            await sees(second, [node_id])
            streamed = await http.post(
                "/v1/chat/completions", json={**ask, "stream": True}, headers=key
            )
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    deltas = [json.loads(event)["choices"][0]["delta"] for event in events[:-1]]
    pieces = [piece for delta in deltas for piece in delta.get("tool_calls", [])]
    calls = whole["choices"][0]["message"]["tool_calls"]
    assert [piece["function"] for piece in pieces] == [call["function"] for call in calls]
    assert [piece["id"] for piece in pieces] == [call["id"] for call in calls]
    assert sim.calls[TOOL_MODEL] == 1


async def test_an_unreachable_shared_store_costs_a_keyed_request_no_more_than_its_budget(
    tmp_path: Path,
) -> None:
    """NATS down: the store read gives up quickly, and the serving path gets only what is
    left of the budget. A local runtime slower than that leftover makes the answer a 504
    at the budget; before, the read ate seconds and the budget then started anew (ok)."""
    server = NatsServer(port=free_port(), jetstream_dir=tmp_path / "js")
    await server.start()
    async with Simulator(models=[SimModel("m:1b")], latency_ms=1450) as local:
        settings = RouterSettings(
            nats_url=[server.url],
            http={"host": "127.0.0.1", "port": 0},
            local_node="here",
            local_runtime={"kind": "ollama", "url": local.url},
            idempotency=ROUTERS_SHARED,
        )
        async with (
            RouterService(settings) as router,
            httpx.AsyncClient(base_url=router.url, timeout=30) as http,
        ):
            await until(lambda: router.gate.shared is not None, timeout_s=10)
            await server.stop()
            await until(lambda: not router.nc.is_connected, timeout_s=10)
            job = {"prompt": "x", "model": "m:1b", "timeout_ms": 1500}
            keyed = await http.post("/infer", json=job, headers={"Idempotency-Key": "k1"})
    assert keyed.status_code == 504, keyed.json()
    assert keyed.json()["error"]["code"] == "DEADLINE_EXCEEDED"


@asynccontextmanager
async def router_process(
    tmp_path: Path, settings: dict[str, Any], sees: str, api_key: str | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A router in a process of its own (`python -m router`), once it serves and its fleet
    view holds the node `sees` (asked with `api_key` when its settings name tenants);
    yields the process and its URL."""
    port = free_port()
    config = tmp_path / f"router-{port}.json"  # JSON is YAML
    listen = {"host": "127.0.0.1", "port": port}
    config.write_text(json.dumps({**settings, "http": {**settings.get("http", {}), **listen}}))
    log = (tmp_path / f"router-{port}.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--config", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with httpx.AsyncClient(base_url=url, timeout=2, headers=headers) as http:

            async def sees_node() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return sees in (await http.get("/nodes")).text
                return False

            async with asyncio.timeout(30):
                while not await sees_node():
                    assert process.returncode is None, (tmp_path / log.name).read_text()
                    await asyncio.sleep(0.1)
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


async def test_a_key_whose_router_died_runs_through_another_router_after_its_lease(
    nats_server: NatsServer,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
    tmp_path: Path,
) -> None:
    """Router one claims the key and sends the job, then is killed: the duplicate through
    router two waits while its lease (1 s) lives, then takes the key over; the node still
    runs the first job, so the duplicate joins it: one runtime call in all."""
    async with (
        Simulator(models=[SimModel("llama3:8b")], latency_ms=4_000) as sim,
        start_worker(backends=[backend(sim.url)], idempotency=SHARED),
        router_process(
            tmp_path,
            {"nats_url": [nats_server.url], "idempotency": ROUTERS_SHARED},
            sees=node_id,
        ) as (doomed, doomed_url),
        start_router(idempotency=ROUTERS_SHARED) as other,
        httpx.AsyncClient(timeout=30) as http,
    ):
        await sees(other, [node_id])
        key = {"Idempotency-Key": f"orphan-{uuid.uuid4().hex}"}
        body = job("run me once")
        lost = asyncio.create_task(http.post(f"{doomed_url}/infer", json=body, headers=key))
        await until(lambda: sim.open_connections == 1, timeout_s=10)
        doomed.send_signal(signal.SIGKILL)
        await doomed.wait()
        killed_at = time.perf_counter()
        answer = await http.post(f"{other.url}/infer", json=body, headers=key)
        took_s = time.perf_counter() - killed_at
        with contextlib.suppress(httpx.HTTPError):
            await lost
    print(f"the duplicate through router two answered {took_s:.2f} s after the SIGKILL")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["cached"]) == ("ok", True)
    assert sim.calls["llama3:8b"] == 1


async def test_a_full_shared_bucket_leaves_keyed_jobs_answered_and_the_bucket_bounded(
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    nc: NatsClient,
    node_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`idempotency.max_bytes` bounds the bucket the router makes: once it is full, a new
    key's claim is refused and its job runs unguarded (logged), answered all the same."""
    bucket = f"bounded_{uuid.uuid4().hex[:8]}"
    bounded = {**ROUTERS_SHARED, "bucket": bucket, "max_bytes": 2_048}
    async with (
        Simulator(models=[SimModel("llama3:8b")]) as sim,
        fleet(start_worker, node_id, sim.url, count=1) as nodes,
        start_router(idempotency=bounded) as router,
        httpx.AsyncClient(timeout=30) as http,
    ):
        await sees(router, nodes)
        answers = [
            await http.post(
                f"{router.url}/infer",
                json=job(f"question {n}"),
                headers={"Idempotency-Key": f"k-{n}"},
            )
            for n in range(12)
        ]
        info = await nc.jetstream().stream_info(f"KV_{bucket}")
    assert [answer.status_code for answer in answers] == [200] * 12
    assert info.config.max_bytes == 2_048
    assert info.state.bytes <= 2_048
    assert "idempotency store unwritable" in caplog.text
