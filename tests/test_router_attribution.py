"""A node is judged by its own faults only. Real router, workers, simulators, NATS.

Each test is one rule of how a node is judged and a request answered (router/attempts/
decision.py, ops/offload_routing.md "Fault attribution"), seen end to end.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import nats

from services.bus import flush_interest, wait_for_worker
from services.capabilities import ServedModel, encode_capabilities
from services.nats_server import NatsServer
from services.wire import decode_response
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import until
from tests.worker_process import worker_process
from tools.simfleet import SimNode
from tools.simulator import Fault, SimModel, Simulator

JOB = {"prompt": "hi", "model": "llama3:8b"}


async def breakers_of(http: httpx.AsyncClient) -> dict[str, dict[str, str]]:
    return {n["node_id"]: n["breakers"] for n in (await http.get("/nodes")).json()["nodes"]}


async def test_a_half_open_trial_longer_than_a_probe_runs_to_its_end(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """Item 1: the trial was abandoned after 250 ms as "node lost", reopening the breaker."""
    async with start_router() as router, httpx.AsyncClient(base_url=router.url, timeout=10) as http:
        async with start_worker(backends=[backend(simulator.url)]) as worker:
            await until(lambda: node_id in router.fleet.nodes)
            await worker.nc.close()  # gone without a word, as a killed process would be
        for _ in range(3):  # gone: no responders three times
            await http.post("/infer", json=JOB)
        assert (await breakers_of(http))[node_id]["llm"] == "open"
        simulator.latency_ms = 800  # the trial takes longer than any probe interval
        async with start_worker(backends=[backend(simulator.url)]):
            answer = await http.post("/infer", json=JOB)
            breakers = await breakers_of(http)
    assert answer.status_code == 200, answer.text
    assert breakers[node_id]["llm"] == "closed"


async def test_a_callers_short_budget_never_opens_a_healthy_nodes_breaker(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """Item 2: three 200 ms budgets against a 1 s runtime opened the node."""
    simulator.latency_ms = 1000
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        short = [await http.post("/infer", json={**JOB, "timeout_ms": 200}) for _ in range(4)]
        patient = await http.post("/infer", json={**JOB, "timeout_ms": 10_000})
        breakers = await breakers_of(http)
    assert [a.json()["error"]["code"] for a in short] == ["DEADLINE_EXCEEDED"] * 4
    assert patient.status_code == 200, patient.text
    assert breakers[node_id]["llm"] == "closed"


async def test_a_request_the_runtime_rejects_is_the_requests_fault_on_every_node(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """Item 3: a runtime's 400 was BACKEND_ERROR, tried on every node, opening them all."""
    nodes = [f"{node_id}-{i}" for i in range(3)]
    async with (
        Simulator(models=[SimModel("m:1b")]) as sim,
        start_worker(node_id=nodes[0], backends=[backend(sim.url)]),
        start_worker(node_id=nodes[1], backends=[backend(sim.url)]),
        start_worker(node_id=nodes[2], backends=[backend(sim.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        sim.set_fault("m:1b", Fault("bad_request", count=3))
        rejected = [await http.post("/infer", json={"prompt": "x", "model": "m:1b"})]
        sim.set_fault("m:1b", Fault("bad_request", count=2))
        rejected += [await http.post("/infer", json={"prompt": "x", "model": "m:1b"})]
        rejected += [await http.post("/infer", json={"prompt": "x", "model": "m:1b"})]
        valid = await http.post("/infer", json={"prompt": "fine", "model": "m:1b"})
        breakers = await breakers_of(http)
        calls = sim.calls["m:1b"]
    assert [a.status_code for a in rejected] == [400, 400, 400]
    assert [a.json()["error"]["code"] for a in rejected] == ["BAD_REQUEST"] * 3
    assert [len(a.json()["route"]["attempts"]) for a in rejected] == [1, 1, 1]  # tried once
    assert valid.status_code == 200, valid.text
    assert calls == 4
    assert all(kinds.get("llm", "closed") == "closed" for kinds in breakers.values())


async def test_clients_hanging_up_do_not_make_a_healthy_node_withdraw_its_models(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """Item 4: each cancellation counted against the runtime; five made it unhealthy."""
    simulator.tokens = 200
    simulator.token_interval_ms = 20
    async with (
        start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 8}) as worker,
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        body = {**JOB, "stream": True}
        for _ in range(8):
            async with http.stream("POST", "/infer", json=body) as response:
                async for _line in response.aiter_lines():
                    break  # the first token is in; now hang up
        await until(lambda: worker.admission.load()["llm"].inflight == 0)
        runtime = worker.backends[0]
        errors_counted = runtime.recent_errors
        await worker.refresh()  # the next probe: would mark it unhealthy after 5 errors
        served = len(worker.catalog.models)
        after = await http.post("/infer", json=JOB)
    assert errors_counted == 0
    assert runtime.state == "healthy"
    assert served > 0
    assert after.status_code == 200


async def test_a_node_over_the_routers_attempt_cap_is_left_for_the_next(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """The per-attempt cap is the router's limit, not the caller's budget: move on."""
    async with (
        Simulator(models=[SimModel("m:1b")], latency_ms=30_000) as slow,
        Simulator(models=[SimModel("m:1b")]) as quick,
        start_worker(node_id=f"{node_id}-a", backends=[backend(slow.url)]),
        start_worker(node_id=f"{node_id}-b", backends=[backend(quick.url)]),
        start_router(offload={"attempt_timeout_ms": 500}) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        answer = await http.post("/infer", json={"prompt": "x", "model": "m:1b"})
    outcomes = [(a["node"], a["outcome"]) for a in answer.json()["route"]["attempts"]]
    assert answer.status_code == 200, answer.text
    assert outcomes[-1] == (f"{node_id}-b", "ok")
    assert (f"{node_id}-a", "DEADLINE_EXCEEDED") in outcomes or len(outcomes) == 1


async def test_a_worker_cancels_a_whole_job_on_the_cancel_subject(
    start_worker: WorkerFactory, nc: Any, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("m:1b")], latency_ms=30_000) as slow,
        start_worker(backends=[backend(slow.url)]) as worker,
    ):
        job = {"job_id": "whole-1", "prompt": "x", "model": "m:1b", "timeout_ms": 20_000}
        pending = asyncio.ensure_future(
            nc.request(f"node.{node_id}.llm.request", json.dumps(job).encode(), timeout=10)
        )
        await until(lambda: worker.admission.load()["llm"].inflight == 1)
        await nc.publish(f"node.{node_id}.cancel", b'{"job_id": "whole-1"}')
        reply = decode_response((await pending).data)
        await until(lambda: slow.open_connections == 0)
    assert reply.error is not None
    assert reply.error.code == "CANCELLED"
    assert worker.admission.load()["llm"].inflight == 0


async def test_with_the_line_off_every_node_busy_is_429_with_the_smallest_retry_after(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    """Item 9: a saturated fleet answered 503 NO_ROUTE without Retry-After. When calls may
    not wait in the router's line (`admission.max_wait_ms: 0`), the nodes' BUSY is the
    answer: 429 with the smallest Retry-After they gave."""
    async with (
        Simulator(models=[SimModel("m:1b")], latency_ms=1500) as slow,
        start_worker(
            node_id=f"{node_id}-a",
            backends=[backend(slow.url)],
            limits={"llm_concurrency": 1, "retry_after_ms": 2500},
        ),
        start_worker(
            node_id=f"{node_id}-b",
            backends=[backend(slow.url)],
            limits={"llm_concurrency": 1, "retry_after_ms": 1200},
        ),
        start_router(admission={"max_wait_ms": 0}) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        job = {"prompt": "x", "model": "m:1b"}
        holders = [asyncio.ensure_future(http.post("/infer", json=job)) for _ in range(2)]
        await until(lambda: slow.open_connections == 2)
        busy = await http.post("/infer", json=job)
        openai_busy = await http.post(
            "/v1/chat/completions",
            json={"model": "m:1b", "messages": [{"role": "user", "content": "x"}]},
        )
        await asyncio.gather(*holders)
    assert busy.status_code == 429, busy.text
    assert busy.json()["error"]["code"] == "BUSY"
    assert busy.headers["retry-after"] == "2"  # 1,200 ms, rounded up to whole seconds
    assert openai_busy.status_code == 429
    assert openai_busy.headers["retry-after"] == "2"


async def test_bad_bodies_get_400_or_413_never_500(start_router: RouterFactory) -> None:
    """Item 10: deep nesting and lone surrogates escaped as 500; big bodies were read whole."""
    async with (
        start_router(http={"host": "127.0.0.1", "port": 0, "max_body_bytes": 65_536}) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        deep = await http.post("/infer", content=b"[" * 30_000 + b"]" * 30_000)
        surrogate = await http.post(
            "/v1/chat/completions",
            content=b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
        )

        async def endless() -> Any:
            for _ in range(10_000):  # 640 MB if it were read whole
                yield b" " * 65_536

        huge = await http.post("/infer", content=endless())
        alive = await http.get("/health")
    assert (deep.status_code, deep.json()["error"]["code"]) == (400, "BAD_REQUEST")
    assert (surrogate.status_code, surrogate.json()["error"]["code"]) == (400, "BAD_REQUEST")
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert alive.status_code == 200


async def test_streamed_openai_chunks_carry_the_model_that_serves(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    """Every chunk names the model, not only the last one."""
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}  # no model
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    models = {json.loads(line[6:])["model"] for line in lines}
    assert len(lines) > 2
    assert len(models) == 1
    assert "" not in models


async def test_a_nats_restart_opens_no_breaker(
    tmp_path: Path,
    simulator: Simulator,
    start_router: RouterFactory,
    private_nats: NatsServer,
    node_id: str,
) -> None:
    """Item 8: no responders while the router itself reconnected counted against nodes.

    The worker is frozen across the restart so that it reconnects after the router: the
    router's first requests meet "no responders" while the bus settles, as in a fleet
    whose nodes come back one by one.
    """
    async with (
        worker_process(tmp_path, node_id, private_nats.url, simulator.url) as worker,
        start_router(nats_url=[private_nats.url]) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        await until(lambda: node_id in router.fleet.nodes, timeout_s=15)
        worker.send_signal(signal.SIGSTOP)
        await private_nats.stop()
        await private_nats.start()  # the same port: everyone reconnects
        await until(lambda: router.nc.is_connected, timeout_s=10)
        while_settling = [await http.post("/infer", json=JOB) for _ in range(4)]
        worker.send_signal(signal.SIGCONT)
        probe = await nats.connect(private_nats.url)
        await wait_for_worker(probe, f"node.{node_id}.llm.request")
        await probe.close()
        after = await http.post("/infer", json=JOB)
        breakers = await breakers_of(http)
    assert [a.status_code for a in while_settling] == [503] * 4
    assert after.status_code == 200, after.text
    assert breakers.get(node_id, {}).get("llm", "closed") == "closed"


async def test_replies_come_on_node_scoped_unguessable_inboxes_and_forgeries_are_dropped(
    simulator: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    nats_server: NatsServer,
    node_id: str,
) -> None:
    """Inboxes are unguessable, and a message on one is taken only when it names the job."""
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        spy = await nats.connect(nats_server.url)
        seen: list[str] = []

        async def forge(msg: Any) -> None:  # another party that hears the job
            seen.append(msg.reply)
            real = json.loads(msg.data)["job_id"]
            forged = {"job_id": "not-" + real, "status": "ok", "result": {"text": "FORGED"}}
            await spy.publish(msg.reply, json.dumps(forged).encode())
            chunk = {"job_id": "not-" + real, "seq": 1, "delta": "FORGED"}
            await spy.publish(msg.reply, json.dumps(chunk).encode())
            # The right job id, but on another node's inbox: refused too.
            parts = msg.reply.split(".")
            other = ".".join([parts[0], "someone-else", *parts[2:]])
            same = {"job_id": real, "status": "ok", "result": {"text": "FORGED"}}
            await spy.publish(other, json.dumps(same).encode())

        await spy.subscribe(f"node.{node_id}.llm.request", cb=forge)
        await flush_interest(spy)
        whole = await http.post("/infer", json=JOB)
        streamed = await http.post("/infer", json={**JOB, "stream": True})
        # drain, not close: the forger's callbacks run to their end (a close could cancel
        # one still queued), then its forgeries are flushed; the router takes them in its
        # own time
        await spy.drain()
        link = router.link
        await until(lambda: link.dropped >= 6)  # three per job, whenever they arrived
    assert whole.status_code == 200
    assert "FORGED" not in whole.json()["result"]["text"]
    assert "FORGED" not in streamed.text
    assert len(seen) == 2
    for reply in seen:
        prefix, node, _router_random, token = reply.split(".")
        assert (prefix, node) == ("_INBOX", node_id)
        assert len(token) == 32  # 128 random bits, hex
    assert seen[0] != seen[1]


async def test_an_unreadable_answer_from_the_asked_node_is_its_fault_at_once(
    nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    """A node that answers garbage (no job id to read) fails the attempt as INTERNAL,
    counted against it; the router does not wait out the budget for a proper answer."""
    node = SimNode(f"{node_id}-garbled", (ServedModel(name="g:1b", type="llm", runtime="ollama"),))

    async def garble(msg: Any) -> None:
        await nc.publish(msg.reply, b"\x00 not json")

    await nc.subscribe(f"node.{node.node_id}.llm.request", cb=garble)
    await flush_interest(nc)
    async with start_router() as router, httpx.AsyncClient(base_url=router.url) as http:
        await nc.publish(f"ncs.capabilities.{node.node_id}", encode_capabilities(node.record(30)))
        await until(lambda: node.node_id in router.fleet.nodes)
        answer = await http.post(
            "/infer", json={"prompt": "hi", "model": "g:1b", "timeout_ms": 30_000}
        )
    attempts = answer.json()["route"]["attempts"]
    assert [(a["node"], a["outcome"]) for a in attempts] == [(node.node_id, "INTERNAL")]


async def test_messages_behind_the_answer_on_a_jobs_inbox_are_counted_as_dropped(
    nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    """Whatever comes on a job's inbox behind its answer is dropped and counted, however
    close behind it came (in the same read as the answer, or once the job was done)."""
    node = SimNode(f"{node_id}-chatty", (ServedModel(name="c:1b", type="llm", runtime="ollama"),))

    async def answer_then_more(msg: Any) -> None:
        job_id = json.loads(msg.data)["job_id"]
        answer = {"job_id": job_id, "status": "ok", "result": {"text": "real"}}
        await nc.publish(msg.reply, json.dumps(answer).encode())
        extra = {"job_id": "not-" + job_id, "status": "ok", "result": {"text": "FORGED"}}
        await nc.publish(msg.reply, json.dumps(extra).encode())
        await nc.publish(msg.reply, json.dumps(answer).encode())  # the answer again

    await nc.subscribe(f"node.{node.node_id}.llm.request", cb=answer_then_more)
    await flush_interest(nc)
    async with start_router() as router, httpx.AsyncClient(base_url=router.url) as http:
        await nc.publish(f"ncs.capabilities.{node.node_id}", encode_capabilities(node.record(30)))
        await until(lambda: node.node_id in router.fleet.nodes)
        answer = await http.post("/infer", json={"prompt": "hi", "model": "c:1b"})
        await nc.flush()
        await until(lambda: router.link.dropped >= 2)
        assert router.link.dropped == 2
    assert answer.status_code == 200
    assert answer.json()["result"]["text"] == "real"
