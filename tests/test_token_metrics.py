"""Time to first token, inter-token gaps, job time and tokens, on both processes: the router
by model and node, the worker by model and runtime; a forgotten node's series go with it."""

from __future__ import annotations

import re

import httpx
from prometheus_client import generate_latest

from router.attempts.route import Route
from router.metrics import RouterMetrics
from services.token_times import TokenTimes
from services.wire import JobResponse, Result, Usage
from tests.conftest import RouterFactory, WorkerFactory, backend
from tools.simulator import Simulator


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_both_processes_count_ttft_gaps_and_tokens_of_a_stream(
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    node_id: str,
) -> None:
    async with (
        Simulator(tokens=8, token_interval_ms=2) as sim,
        start_worker(backends=[backend(sim.url)], metrics_port=0) as worker,
        start_router() as router,
        httpx.AsyncClient(timeout=30) as http,
    ):
        body = {
            "model": "llama3.2:3b",
            "stream": True,
            "messages": [{"role": "user", "content": "count to eight"}],
            "stream_options": {"include_usage": True},
        }
        streamed = await http.post(f"{router.url}/v1/chat/completions", json=body)
        assert streamed.status_code == 200
        whole = await http.post(f"{router.url}/v1/chat/completions", json={**body, "stream": False})
        assert whole.status_code == 200
        routed = (await http.get(f"{router.url}/metrics")).text
        worked = (await http.get(f"http://127.0.0.1:{worker.metrics_port}/metrics")).text
    where = {"model": "llama3.2:3b", "node": node_id}
    assert sample(routed, "inferbus_router_ttft_seconds_count", **where) == 1  # streams only
    assert sample(routed, "inferbus_router_inter_token_seconds_count", **where) >= 1
    assert sample(routed, "inferbus_router_served_seconds_count", **where) == 2
    assert sample(routed, "inferbus_router_tokens_total", kind="completion", **where) == 16
    runtime = {"model": "llama3.2:3b", "runtime": "ollama"}
    assert sample(worked, "inferbus_worker_ttft_seconds_count", **runtime) == 1
    assert sample(worked, "inferbus_worker_inter_token_seconds_count", **runtime) >= 1
    assert sample(worked, "inferbus_worker_runtime_call_seconds_count", **runtime) == 2
    assert sample(worked, "inferbus_worker_tokens_total", kind="completion", **runtime) == 16


def test_a_forgotten_nodes_token_series_are_dropped_and_failures_never_labelled() -> None:
    metrics = RouterMetrics(lambda: {})
    answer = JobResponse(
        job_id="j", status="ok", result=Result(usage=Usage(prompt_tokens=3, completion_tokens=4))
    )
    times = TokenTimes(0.0)
    for at in (0.1, 0.15, 0.2):
        times.piece(at)
    for node in ("gone", "stays"):
        metrics.served(Route(via="remote", node=node, model="m"), answer, 0.3, times)
    failed = JobResponse(job_id="j", status="error")
    metrics.served(Route(via="none", model="whatever-a-caller-typed"), failed, 0.1, None)
    metrics.forget("gone")
    text = generate_latest(metrics.registry).decode()
    assert 'node="gone"' not in text
    assert "whatever-a-caller-typed" not in text
    assert sample(text, "inferbus_router_ttft_seconds_sum", model="m", node="stays") == 0.1
    assert sample(text, "inferbus_router_inter_token_seconds_count", model="m", node="stays") == 2
    assert sample(text, "inferbus_router_tokens_total", model="m", node="stays", kind="prompt") == 3
