"""Router API keys and size limits, as a client meets them."""

from __future__ import annotations

import base64
import logging

import httpx
import openai
import pytest

from tests.conftest import RouterFactory, WorkerFactory, backend
from tools.simulator import Simulator

KEY = "sk-router-0123456789"


async def test_without_a_key_requests_get_401_and_probes_stay_open(
    simulator: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router(http={"host": "127.0.0.1", "port": 0, "api_keys": [KEY]}) as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        body = {"messages": [{"role": "user", "content": "hi"}]}
        missing = await http.post("/v1/chat/completions", json=body)
        wrong = await http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}
        )
        right = await http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
        health = await http.get("/health")
        ready = await http.get("/ready")
        nodes = await http.get("/nodes")
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
        await client.close()
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (health.status_code, ready.status_code, nodes.status_code) == (200, 200, 401)
    assert KEY not in caplog.text


async def test_oversized_bodies_and_images_get_a_clear_413(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    limits = {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64_000, "max_image_bytes": 2048}
    image = base64.b64encode(b"\x89PNG" + b"\x00" * 4096).decode()
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router(http=limits) as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        huge = await http.post("/infer", json={"prompt": "x" * 100_000})
        picture = await http.post("/infer", json={"prompt": "what?", "images": [image]})
        openai_route = await http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x" * 100_000}]},
        )
    assert huge.status_code == 413
    assert "limit is 64000" in huge.json()["error"]["message"]
    assert picture.status_code == 413
    assert "an image is" in picture.json()["error"]["message"]
    assert openai_route.status_code == 413
    assert openai_route.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_a_job_over_the_bus_limit_is_413_and_no_node_is_blamed(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    prompt = "x" * 1_500_000  # under the router's body limit, over NATS's default 1 MB
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        whole = await http.post("/infer", json={"prompt": prompt})
        streamed = await http.post("/infer", json={"prompt": prompt, "stream": True})
        breakers = {n["node_id"]: n["breakers"] for n in (await http.get("/nodes")).json()["nodes"]}
    for answer in (whole, streamed):
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert breakers[node_id].get("llm", "closed") == "closed"
