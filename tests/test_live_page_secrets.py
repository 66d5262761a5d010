"""Everything the live page sends a browser, read on a real router with every kind of secret
in play: the router's API key, a cloud provider's key, a runtime's API key and the password
in its URL, and the prompts and answers of requests that went to the fleet and to the
cloud. The page, its assets, its login form and its event stream carry none of them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.cloud_sims import PRIMARY
from tests.conftest import RouterFactory, WorkerFactory, backend
from tools.simulator import SimModel, Simulator

FLEET_MODEL = "llama3:8b"
ROUTER_KEY = "router-key-" + uuid.uuid4().hex
CLOUD_KEY = "cloud-key-" + uuid.uuid4().hex
RUNTIME_KEY = "runtime-key-" + uuid.uuid4().hex
RUNTIME_PASSWORD = "pw" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def keys_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGE_CLOUD_KEY", CLOUD_KEY)
    monkeypatch.setenv("PAGE_RUNTIME_KEY", RUNTIME_KEY)


async def snapshot_of(http: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """The stream as sent until its snapshot (raw text), and the snapshot parsed."""
    sent = ""
    async with http.stream("GET", "/ui/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            sent += line + "\n"
            if line.startswith("data: ") and sent.count("event: ") == 2:
                return sent, json.loads(line[6:])
    raise AssertionError(f"the stream ended before its snapshot: {sent!r}")


async def test_nothing_the_page_receives_carries_a_key_a_password_or_content(
    alpha: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    prompts = {
        "fleet": "fleet-prompt-" + uuid.uuid4().hex,
        "cloud": "cloud-prompt-" + uuid.uuid4().hex,
    }
    async with Simulator(models=[SimModel(FLEET_MODEL)], tokens=6) as runtime:
        runtime_url = runtime.url.replace("http://", f"http://operator:{RUNTIME_PASSWORD}@")
        providers = {
            "alpha": {"base_url": alpha.url, "api_keys": ["PAGE_CLOUD_KEY"], "models": [PRIMARY]}
        }
        async with (
            start_worker(backends=[backend(runtime_url, api_key_env="PAGE_RUNTIME_KEY")]),
            start_router(
                http={"host": "127.0.0.1", "port": 0, "api_keys": [ROUTER_KEY]},
                providers=providers,
                local_node=node_id,
            ) as router,
            httpx.AsyncClient(
                base_url=router.url, timeout=30, headers={"Authorization": f"Bearer {ROUTER_KEY}"}
            ) as http,
        ):
            answers = []
            for model, prompt in ((FLEET_MODEL, prompts["fleet"]), (PRIMARY, prompts["cloud"])):
                body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
                answer = await http.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                answers.append(answer.json()["choices"][0]["message"]["content"])
            sent = {
                name: (await http.get(f"/ui/{name}")).text for name in ("", "app.js", "style.css")
            }
            async with httpx.AsyncClient(base_url=router.url, timeout=30) as stranger:
                sent["login"] = (await stranger.get("/ui/login")).text
                refused = await stranger.post("/ui/login", data={"key": "wrong"})
                sent["refused login"] = refused.text + json.dumps(dict(refused.headers))
            login = await http.post(
                "/ui/login", data={"key": ROUTER_KEY}, headers={"Authorization": ""}
            )
            sent["login answer"] = json.dumps(dict(login.headers)) + login.text
            sent["stream"], snapshot = await snapshot_of(http)

    # What is checked is there: both requests, the node and its runtime, the provider.
    assert {row["via"] for row in snapshot["requests"]} == {"remote", "cloud"}
    node = next(row for row in snapshot["nodes"] if row["id"] == node_id)
    assert node["runtimes"][0]["state"] == "healthy"
    assert runtime.url.removeprefix("http://") in node["runtimes"][0]["url"]  # its host, shown
    assert [p["provider"] for p in snapshot["providers"]["providers"]] == ["alpha"]
    secrets = {
        "the router's key": ROUTER_KEY,
        "the cloud key": CLOUD_KEY,
        "the runtime's key": RUNTIME_KEY,
        "the runtime URL's password": RUNTIME_PASSWORD,
        **{f"the {route} prompt": prompt for route, prompt in prompts.items()},
        **{f"answer {n}": text for n, text in enumerate(answers)},
    }
    leaks = [
        f"{what} in {where}"
        for where, text in sent.items()
        for what, secret in secrets.items()
        if secret in text
    ]
    assert leaks == []
