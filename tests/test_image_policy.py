"""`images.remote_urls` end to end: router and worker with real processes.

A caller's image URL is never handed to a runtime. By default both the router and the
worker refuse it (400 / BAD_REQUEST naming the field) without touching the URL; with
`fetch` the router downloads it itself (loopback and private addresses refused) and the
node receives base64. The backend here is OpenAI-compatible: its adapter passes nothing
but inline images, so an `ok` answer means the image arrived inline.
"""

from __future__ import annotations

from typing import Any

import httpx
from nats.aio.client import Client as NatsClient

from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.image_server import image_server
from tests.jobs import ask, vision
from tests.test_worker_jobs import TINY_PNG
from tools.simulator import Simulator

LOOPBACK_FETCH = {"remote_urls": "fetch", "test_only_allowed_addresses": ["127.0.0.1"]}


def openai_backend(simulator: Simulator) -> dict[str, Any]:
    return backend(simulator.url, kind="openai")


def chat_with_image(url: str) -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url}}
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, part]}]}


async def test_the_router_refuses_image_urls_by_default_without_fetching_them(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        image_server() as images,
        start_worker(backends=[openai_backend(simulator)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        native = await http.post(
            "/infer", json={"prompt": "what?", "images": [images.url("/cat.png")]}
        )
        openai = await http.post(
            "/v1/chat/completions", json=chat_with_image(images.url("/cat.png"))
        )
    assert native.status_code == 400
    assert native.json()["error"]["code"] == "BAD_REQUEST"
    assert "`images[0]`" in native.json()["error"]["message"]
    assert openai.status_code == 400
    assert "`messages[0].content[1].image_url`" in openai.json()["error"]["message"]
    assert sum(images.hits.values()) == 0
    assert simulator.calls["llava:7b"] == 0


async def test_with_fetch_the_router_still_refuses_a_loopback_url(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        image_server() as images,
        start_worker(backends=[openai_backend(simulator)]),
        start_router(images={"remote_urls": "fetch"}) as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        for host in ("127.0.0.1", "localhost"):
            answer = await http.post(
                "/v1/chat/completions", json=chat_with_image(images.url("/cat.png", host))
            )
            assert answer.status_code == 400, answer.text
            assert "loopback" in answer.json()["error"]["message"]
    assert sum(images.hits.values()) == 0
    assert simulator.calls["llava:7b"] == 0


async def test_with_fetch_the_router_downloads_the_image_and_the_node_gets_base64(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        image_server() as images,
        start_worker(backends=[openai_backend(simulator)]),  # the worker refuses URLs
        start_router(images=LOOPBACK_FETCH) as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        answer = await http.post(
            "/v1/chat/completions", json=chat_with_image(images.url("/cat.png"))
        )
        redirected = await http.post(
            "/infer", json={"prompt": "what?", "images": [images.url("/redirect")]}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "llava:7b"
    assert images.hits["/cat.png"] == 1  # once, by the router
    assert simulator.calls["llava:7b"] == 1
    assert redirected.status_code == 400
    assert "redirects are refused" in redirected.json()["error"]["message"]


async def test_the_router_refuses_an_image_that_is_not_one_before_it_travels(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    cases = {
        "not base64!": "not valid base64",
        "aGVsbG8=": "not PNG, JPEG",
    }
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url) as http,
    ):
        answers = {
            image: await http.post(
                "/infer",
                json={"messages": [{"role": "user", "content": "x", "images": [TINY_PNG, image]}]},
            )
            for image in cases
        }
        good = await http.post("/infer", json={"prompt": "what?", "images": [TINY_PNG]})
    for image, why in cases.items():
        body = answers[image].json()
        assert answers[image].status_code == 400, body
        assert "`messages[0].images[1]`" in body["error"]["message"]
        assert why in body["error"]["message"]
        assert "route" in body
    assert good.status_code == 200, good.text
    assert simulator.calls["llava:7b"] == 1  # only the good one reached a runtime


async def test_a_worker_refuses_image_urls_sent_to_it_directly_for_either_adapter(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with image_server() as images:
        answers = []
        for kind in ("ollama", "openai"):
            async with start_worker(backends=[backend(simulator.url, kind=kind)]):
                job = {"prompt": "what?", "images": [images.url("/cat.png")]}
                answers.append(await ask(nc, vision(node_id), job))
    for answer in answers:
        assert answer.error is not None
        assert answer.error.code == "BAD_REQUEST"
        assert "`images[0]`" in answer.error.message
    assert sum(images.hits.values()) == 0


async def test_a_worker_with_fetch_downloads_the_image_itself_with_the_same_guards(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with (
        image_server() as images,
        start_worker(backends=[openai_backend(simulator)], images=LOOPBACK_FETCH),
    ):
        fetched = await ask(
            nc, vision(node_id), {"prompt": "?", "images": [images.url("/cat.png")]}
        )
        private = await ask(
            nc, vision(node_id), {"prompt": "?", "images": ["http://10.0.0.1/a.png"]}
        )
    assert fetched.status == "ok", fetched.error
    assert images.hits["/cat.png"] == 1
    assert private.error is not None
    assert private.error.code == "BAD_REQUEST"
    assert "private, loopback" in private.error.message
