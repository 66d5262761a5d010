"""A request naming a profile with a static config is served, in order, by the profile's
own model (fleet, the router node's own runtime), its static config, its fallback profile,
and only then the hard default; `route.profile` and `fallback_reason` say which. Once the
static config failed, the fallback profile is looked for on the whole fleet; when nothing
serves it, the hard default still comes last."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import until
from tools.simulator import Fault, SimModel, Simulator


@pytest.fixture
async def here() -> AsyncIterator[Simulator]:
    """The router node's own runtime, serving the hard default's model and a local one."""
    async with Simulator(models=[SimModel("llama3.2:3b"), SimModel("qwen3:8b")]) as sim:
        yield sim


@pytest.fixture
async def upstream() -> AsyncIterator[Simulator]:
    """The static endpoint a profile names (OpenAI's wire)."""
    async with Simulator(models=[SimModel("gpt-4o-mini")]) as sim:
        yield sim


def settings(here: Simulator, upstream: Simulator, **profiles: dict[str, Any]) -> dict[str, Any]:
    return {
        "local_node": "here",
        "local_runtime": {"kind": "ollama", "url": here.url},
        "llm_profiles": {
            "cloud_gpt": {"provider": "openai", "model": "gpt-4o-mini", "base_url": upstream.url},
            **profiles,
        },
        "hard_default": {"provider": "ollama", "model": "llama3.2:3b"},
    }


async def ask(router_url: str, model: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=router_url, timeout=10) as http:
        answer = await http.post("/infer", json={"prompt": "hi", "model": model})
    body: dict[str, Any] = answer.json()
    assert answer.status_code == 200, body
    return body


async def test_a_profile_s_static_config_comes_before_the_hard_default(
    here: Simulator, upstream: Simulator, start_router: RouterFactory
) -> None:
    async with start_router(**settings(here, upstream)) as router:
        body = await ask(router.url, "cloud_gpt")
    assert (body["route"]["via"], body["model"]) == ("static", "gpt-4o-mini")
    assert body["route"]["profile"] == "cloud_gpt"
    assert upstream.calls["gpt-4o-mini"] == 1
    assert here.calls.get("llama3.2:3b", 0) == 0


async def test_a_failing_static_config_falls_to_the_hard_default_and_says_so(
    here: Simulator, upstream: Simulator, start_router: RouterFactory
) -> None:
    upstream.set_fault("gpt-4o-mini", Fault("error"))
    async with start_router(**settings(here, upstream)) as router:
        body = await ask(router.url, "cloud_gpt")
    route = body["route"]
    assert (route["via"], body["model"]) == ("local", "llama3.2:3b")
    assert route["profile"] is None
    assert route["fallback_reason"] == (
        "profile 'cloud_gpt': cloud profile, its static config failed; "
        "using the hard default; local runtime"
    )
    assert [attempt["via"] for attempt in route["attempts"]] == ["static", "local"]


async def test_the_fallback_profile_comes_before_the_hard_default(
    here: Simulator, upstream: Simulator, start_router: RouterFactory
) -> None:
    values = settings(here, upstream, small={"provider": "ollama", "model": "qwen3:8b"})
    values["selection_policies"] = {"cloud_gpt": {"fallback_profile": "small"}}
    values["llm_profiles"]["cloud_gpt"]["base_url"] = None  # no static config of its own
    async with start_router(**values) as router:
        body = await ask(router.url, "cloud_gpt")
    assert (body["route"]["via"], body["model"]) == ("local", "qwen3:8b")
    assert body["route"]["profile"] == "small"


async def test_a_profile_s_own_model_on_the_local_runtime_comes_first(
    here: Simulator, upstream: Simulator, start_router: RouterFactory
) -> None:
    values = settings(here, upstream, local_qwen={"provider": "ollama", "model": "qwen3:8b"})
    values["llm_profiles"]["local_qwen"]["base_url"] = upstream.url
    async with start_router(**values) as router:
        body = await ask(router.url, "local_qwen")
    assert (body["route"]["via"], body["model"]) == ("local", "qwen3:8b")
    assert upstream.calls.get("qwen3:8b", 0) == 0


async def test_a_failing_static_config_goes_to_the_fallback_profile_on_a_fleet_node(
    here: Simulator,
    upstream: Simulator,
    start_router: RouterFactory,
    start_worker: WorkerFactory,
    node_id: str,
) -> None:
    upstream.set_fault("gpt-4o-mini", Fault("error"))
    values = settings(here, upstream, small={"provider": "ollama", "model": "mistral:7b"})
    values["selection_policies"] = {
        "cloud_gpt": {"required_type": "cloud_llm", "fallback_profile": "small"}
    }
    async with (
        Simulator(models=[SimModel("mistral:7b")]) as fleet_runtime,
        start_worker(backends=[backend(fleet_runtime.url)]),
        start_router(**values) as router,
    ):
        await until(lambda: node_id in router.fleet.nodes, 30)
        body = await ask(router.url, "cloud_gpt")
    route = body["route"]
    assert (route["via"], route["node"], body["model"]) == ("remote", node_id, "mistral:7b")
    assert route["profile"] == "small"
    assert "its static config failed; fallback profile 'small'" in route["fallback_reason"]
    assert [attempt["via"] for attempt in route["attempts"]] == ["static", "remote"]
    assert here.calls.get("llama3.2:3b", 0) == 0  # the hard default was not needed


async def test_the_hard_default_comes_after_a_fallback_profile_nothing_serves(
    here: Simulator, upstream: Simulator, start_router: RouterFactory
) -> None:
    upstream.set_fault("gpt-4o-mini", Fault("error"))
    values = settings(here, upstream, small={"provider": "ollama", "model": "mistral:7b"})
    values["selection_policies"] = {
        "cloud_gpt": {"required_type": "cloud_llm", "fallback_profile": "small"}
    }
    async with start_router(**values) as router:
        body = await ask(router.url, "cloud_gpt")
    route = body["route"]
    assert (route["via"], body["model"]) == ("local", "llama3.2:3b")
    assert route["profile"] is None
    assert route["fallback_reason"].endswith("using the hard default")
    tried = [
        (attempt["via"], attempt["model"], attempt["outcome"]) for attempt in route["attempts"]
    ]
    assert tried == [
        ("static", "gpt-4o-mini", "BACKEND_ERROR"),
        ("local", "mistral:7b", "MODEL_NOT_FOUND"),
        ("local", "llama3.2:3b", "ok"),
    ]


async def test_a_failing_static_config_goes_to_the_fallback_profile_s_own_static_config(
    here: Simulator, upstream: Simulator, start_router: RouterFactory
) -> None:
    """The fallback profile is all of it: a static config of its own is tried before the
    hard default, not skipped because the request's own profile had one that failed."""
    upstream.set_fault("gpt-4o-mini", Fault("error"))
    async with Simulator(models=[SimModel("gpt-4.1-mini")]) as backup:
        values = settings(
            here,
            upstream,
            backup={"provider": "openai", "model": "gpt-4.1-mini", "base_url": backup.url},
        )
        values["selection_policies"] = {
            "cloud_gpt": {"required_type": "cloud_llm", "fallback_profile": "backup"}
        }
        async with start_router(**values) as router:
            body = await ask(router.url, "cloud_gpt")
        assert backup.calls["gpt-4.1-mini"] == 1
    route = body["route"]
    assert (route["via"], body["model"], route["profile"]) == ("static", "gpt-4.1-mini", "backup")
    assert [attempt["via"] for attempt in route["attempts"]] == ["static", "static"]
    assert route["fallback_reason"] == (
        "profile 'cloud_gpt': cloud profile, its static config failed; fallback profile 'backup'"
    )
    assert here.calls.get("llama3.2:3b", 0) == 0  # the hard default was not needed
