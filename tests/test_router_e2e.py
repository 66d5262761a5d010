"""The router end to end: real NATS, real workers, the simulator, real HTTP clients."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import openai

from services.bus import wait_for_worker
from services.nats_server import NatsServer
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import llm, until
from tests.test_worker_jobs import TINY_PNG
from tools.simulator import Fault, SimModel, Simulator

ROOT = Path(__file__).resolve().parent.parent


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


async def test_openai_client_chats_and_lists_models_through_the_router(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
    ):
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
        completion = await client.chat.completions.create(
            model="llama3:8b", messages=[{"role": "user", "content": "hello there"}], max_tokens=4
        )
        models = await client.models.list()
        await client.close()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 4
    assert completion.model == "llama3:8b"
    assert {model.id for model in models.data} >= {"llama3:8b", "llava:7b"}
    owners = {model.id: model.owned_by for model in models.data}
    assert node_id in owners["llama3:8b"]


async def test_infer_returns_the_answer_with_its_route(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        answer = (await http.post("/infer", json={"prompt": "hi", "model": "llama3:8b"})).json()
        unknown = await http.post("/infer", json={"prompt": "hi", "model": "no-such-model"})
        bad = await http.post("/infer", content=b"{not json")
    assert answer["status"] == "ok"
    assert answer["route"]["via"] == "remote"
    assert answer["route"]["node"] == node_id
    assert answer["route"]["attempts"][0]["outcome"] == "ok"
    assert unknown.status_code == 404  # nothing serves it: not NO_ROUTE
    assert unknown.json()["error"]["code"] == "MODEL_NOT_FOUND"
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "BAD_REQUEST"


async def test_busy_node_spills_to_another(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("m:1b")], latency_ms=400) as slow,
        Simulator(models=[SimModel("m:1b")], latency_ms=400) as other,
        start_worker(
            node_id=f"{node_id}-a", backends=[backend(slow.url)], limits={"llm_concurrency": 1}
        ),
        start_worker(
            node_id=f"{node_id}-b", backends=[backend(other.url)], limits={"llm_concurrency": 1}
        ),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        answers = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=chat(f"q{i}", model="m:1b")) for i in range(2))
        )
    assert [a.status_code for a in answers] == [200, 200]
    assert {a.json()["route"]["node"] for a in answers} == {f"{node_id}-a", f"{node_id}-b"}


async def test_all_remote_down_falls_back_to_the_local_runtime(
    simulator: Simulator, start_router: RouterFactory
) -> None:
    local = {"kind": "ollama", "url": simulator.url}
    async with (
        start_router(local_node="here", local_runtime=local) as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        answer = await http.post("/infer", json={"prompt": "hi", "model": "llama3:8b"})
    body = answer.json()
    assert answer.status_code == 200, body
    assert body["route"]["via"] == "local"
    assert body["result"]["text"]
    assert simulator.calls["llama3:8b"] == 1


async def test_hung_worker_ends_at_the_deadline_not_later(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    simulator.set_fault("llama3:8b", Fault("hang"))
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=5) as http,
    ):
        # Without deadline enforcement this would hit the client's own 5 s timeout.
        answer = await http.post("/infer", json={"prompt": "hi", "timeout_ms": 400})
        nodes = (await http.get("/nodes")).json()["nodes"]
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    # The node is alive (its liveness probe answers): the caller's budget ran out, which is
    # nobody's fault but the budget's — one attempt, no breaker counts it.
    assert [a["outcome"] for a in answer.json()["route"]["attempts"]] == ["DEADLINE_EXCEEDED"]
    assert all(n["breakers"].get("llm", "closed") == "closed" for n in nodes)


def worker_config(config: Path, node_id: str, nats_url: str, sim_url: str) -> Path:
    config.write_text(
        f'node_id = "{node_id}"\nnats_url = "{nats_url}"\nheartbeat_s = 1\n'
        "[limits]\nllm_concurrency = 16\n"  # the survivor alone can carry the whole load
        f'[[backends]]\nkind = "ollama"\nurl = "{sim_url}"\n'
    )
    return config


async def worker_process(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node_worker",
        "--config",
        str(config),
        "--log-level",
        "WARNING",
        cwd=ROOT,
        env=os.environ.copy(),
    )


async def test_killing_a_node_under_load_loses_no_request(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Any,
    simulator: Simulator,
    start_router: RouterFactory,
    node_id: str,
) -> None:
    simulator.latency_ms = 50  # several jobs are on the victim when it dies
    victim, survivor = f"{node_id}-victim", f"{node_id}-survivor"
    processes = [
        await worker_process(
            worker_config(tmp_path / "a.toml", victim, nats_server.url, simulator.url)
        ),
        await worker_process(
            worker_config(tmp_path / "b.toml", survivor, nats_server.url, simulator.url)
        ),
    ]
    try:
        for node in (victim, survivor):
            await wait_for_worker(nc, llm(node))
        async with (
            start_router() as router,
            httpx.AsyncClient(base_url=router.url, timeout=10) as http,
        ):
            await until(lambda: len(router.fleet.nodes if router.fleet else {}) >= 2)
            answers: list[httpx.Response] = []

            async def steady(count: int) -> None:
                for i in range(count):
                    answers.append(
                        await http.post("/infer", json={"prompt": f"job {i}", "model": "llama3:8b"})
                    )

            load = [asyncio.create_task(steady(20)) for _ in range(8)]
            await until(lambda: len(answers) >= 20)
            processes[0].send_signal(signal.SIGKILL)
            await asyncio.gather(*load)
            nodes = (await http.get("/nodes")).json()["nodes"]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.wait()
    assert len(answers) == 160
    assert [a.status_code for a in answers if a.status_code != 200] == []
    served_after = {a.json()["route"]["node"] for a in answers[-40:]}
    assert served_after == {survivor}
    breakers = {node["node_id"]: node["breakers"] for node in nodes}
    assert breakers[victim].get("llm") in {"open", "half_open"}


async def test_nodes_ready_and_metrics_show_the_fleet_and_the_traffic(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router(local_node=node_id) as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        await http.post("/infer", json={"prompt": "hi"})
        nodes = (await http.get("/nodes")).json()
        ready = await http.get("/ready")
        health = await http.get("/health")
        metrics = (await http.get("/metrics")).text
    [node] = [n for n in nodes["nodes"] if n["node_id"] == node_id]
    assert node["local"] is True
    assert node["stale"] is False
    assert node["breakers"] == {"llm": "closed"}
    assert {m["name"] for m in node["record"]["served_models"]} == {"llama3:8b", "llava:7b"}
    assert ready.status_code == 200
    assert health.json() == {"status": "ok"}
    assert 'inferbus_router_requests_total{api="infer",status="ok",via="remote"} 1.0' in metrics
    assert f'inferbus_router_attempts_total{{node="{node_id}",outcome="ok"}} 1.0' in metrics
    assert f'inferbus_router_breaker_state{{kind="llm",node="{node_id}"}} 0.0' in metrics


async def test_ready_is_503_when_nothing_could_serve(start_router: RouterFactory) -> None:
    async with (
        start_router(subject_prefix="nobodyhome") as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        ready = await http.get("/ready")
    assert ready.status_code == 503
    assert ready.json() == {"nats_connected": True, "route_possible": False}


async def test_an_openai_image_message_is_routed_as_a_vision_job(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{TINY_PNG}"}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]}
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "llava:7b"
    assert simulator.calls["llava:7b"] == 1


async def test_a_restarted_node_is_not_shut_out_until_its_breaker_times_out(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    job = {"prompt": "hi", "model": "llama3:8b"}
    async with start_router() as router, httpx.AsyncClient(base_url=router.url) as http:
        async with start_worker(backends=[backend(simulator.url)]) as worker:
            await until(lambda: node_id in (router.fleet.nodes if router.fleet else {}))
            await worker.nc.close()  # gone without a word, as a killed process would be
        for _ in range(3):  # the node's worker is gone: no responders, three times
            assert (await http.post("/infer", json=job)).status_code == 503
        breakers = {n["node_id"]: n["breakers"] for n in (await http.get("/nodes")).json()["nodes"]}
        assert breakers[node_id]["llm"] == "open"
        async with start_worker(backends=[backend(simulator.url)]):  # back, announcing itself
            answer = await http.post("/infer", json=job)
            breakers = {
                n["node_id"]: n["breakers"] for n in (await http.get("/nodes")).json()["nodes"]
            }
    assert answer.status_code == 200
    assert breakers[node_id]["llm"] == "closed"
