"""Cloud chains through the router: the official `openai` client, the router, simulators
playing two providers (per-key behaviour chosen by the Authorization header), real NATS.

alpha serves PRIMARY with keys KEY_A, KEY_B; beta serves FALLBACK with a key also named
KEY_A (and holding the same secret): a 429 on alpha's KEY_A must not cool beta's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import openai
import pytest

from router.config import RouterSettings
from router.service import RouterService, StartupError
from services.wire_features import ToolCallAssembler, ToolCallDelta
from tests.cloud_sims import FALLBACK, PRIMARY, TOKENS
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.test_worker_openai_features import ASK_WEATHER, WEATHER_TOOL
from tools.simulator import Fault, KeyBehaviour, SimModel, Simulator, expected_text

FLEET_MODEL, PROMPT = "llama3:8b", "hi"
SECRETS = {"KEY_A": "tenant-alpha-aaaa1111", "KEY_B": "tenant-alpha-bbbb2222"}  # not sk-…
MESSAGES: Any = [{"role": "user", "content": PROMPT}]


@pytest.fixture(autouse=True)
def keys_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, secret in SECRETS.items():
        monkeypatch.setenv(name, secret)


def cloud(alpha: Simulator, beta: Simulator, **extra: Any) -> dict[str, Any]:
    """Router settings with the two providers (fast retries in place)."""
    return {
        "providers": {
            "alpha": {"base_url": alpha.url, "api_keys": ["KEY_A", "KEY_B"], "models": [PRIMARY]},
            "beta": {"base_url": beta.url, "api_keys": ["KEY_A"], "models": [FALLBACK]},
        },
        "failover": {"transient_backoffs_s": [0.05, 0.1]},
        **extra,
    }


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def calls(route: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
    return [(a.get("provider"), a.get("key_id"), a["outcome"]) for a in route["attempts"]]


async def ask(url: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """One whole chat through the router: the text and the answer's route."""
    async with client(url) as openai_client:
        answer = await openai_client.chat.completions.create(
            model=extra.pop("model", PRIMARY), messages=MESSAGES, extra_body=extra or None
        )
    assert answer.model_extra is not None
    return answer.choices[0].message.content or "", answer.model_extra["route"]


async def test_key_b_answers_after_key_as_429_and_the_next_request_skips_a(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("rate_limited", retry_after_s=30))
    async with start_router(**cloud(alpha, beta)) as router:
        text, route = await ask(router.url)
        again, second = await ask(router.url)
    assert text == again == expected_text(PRIMARY, PROMPT, TOKENS)
    assert calls(route) == [("alpha", "KEY_A", "rate_limited"), ("alpha", "KEY_B", "ok")]
    assert route["via"] == "cloud"
    assert route["provider"] == "alpha"
    assert {a["via"] for a in route["attempts"]} == {"cloud"}
    assert all(a["model"] == PRIMARY for a in route["attempts"])
    assert calls(second) == [("alpha", "KEY_B", "ok")]
    assert alpha.key_calls == {SECRETS["KEY_A"]: 1, SECRETS["KEY_B"]: 2}


async def test_a_burst_that_reaches_a_key_before_its_first_429_cools_it_once(
    beta: Simulator, start_router: RouterFactory
) -> None:
    """20 concurrent requests all reach KEY_A of a slow provider (1 s to answer, 429 with
    Retry-After 6) before its first 429 is back: one cooling period, not twenty (which
    parked the key for five minutes); every request then gets KEY_B's answer."""
    async with Simulator(models=[SimModel(PRIMARY)], tokens=TOKENS, latency_ms=1_000) as slow:
        slow.set_key(SECRETS["KEY_A"], KeyBehaviour("rate_limited", retry_after_s=6))
        async with (
            start_router(**cloud(slow, beta)) as router,
            httpx.AsyncClient(base_url=router.url, timeout=60) as http,
        ):
            body = {"model": PRIMARY, "messages": MESSAGES}
            answers = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(20))
            )
            providers = (await http.get("/providers")).json()["providers"]
    by_provider = {p["provider"]: p for p in providers}
    keys = {key["key_id"]: key for key in by_provider["alpha"]["keys"]}
    print(f"KEY_A after the burst: {keys['KEY_A']}")
    assert [answer.status_code for answer in answers] == [200] * 20
    assert slow.key_calls == {SECRETS["KEY_A"]: 20, SECRETS["KEY_B"]: 20}
    assert (keys["KEY_A"]["state"], keys["KEY_A"]["reason"]) == ("cooling", "rate_limited")
    assert keys["KEY_A"]["consecutive_cooldowns"] == 1
    assert 0 < keys["KEY_A"]["cooldown_left_s"] <= 6.0  # Retry-After, from the last 429


async def test_a_sibling_provider_is_not_cooled_by_the_first_ones_429(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    for name in ("KEY_A", "KEY_B"):
        alpha.set_key(SECRETS[name], KeyBehaviour("rate_limited", retry_after_s=30))
    async with start_router(**cloud(alpha, beta)) as router:
        # LiteLLM's request field, with its object form: the request's own fallbacks.
        text, route = await ask(router.url, fallbacks=[{"model": FALLBACK}])
    assert text == expected_text(FALLBACK, PROMPT, TOKENS)
    assert calls(route)[-1] == ("beta", "KEY_A", "ok")  # same key name and secret, other provider
    assert beta.key_calls == {SECRETS["KEY_A"]: 1}


async def test_the_chain_reaches_the_fallback_model_when_the_primarys_keys_are_out(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("revoked"))
    alpha.set_key(SECRETS["KEY_B"], KeyBehaviour("no_balance"))
    async with start_router(**cloud(alpha, beta, fallbacks=[FALLBACK])) as router:
        text, route = await ask(router.url)
        again, second = await ask(router.url)
        async with httpx.AsyncClient(base_url=router.url) as http:
            providers = (await http.get("/providers")).json()["providers"]
    assert text == again == expected_text(FALLBACK, PROMPT, TOKENS)
    assert calls(route) == [
        ("alpha", "KEY_A", "auth"),
        ("alpha", "KEY_B", "quota"),
        ("beta", "KEY_A", "ok"),
    ]
    assert calls(second) == [("beta", "KEY_A", "ok")]  # the disabled model is not asked
    by_name = {p["provider"]: p for p in providers}
    assert by_name["alpha"]["models"][0]["state"] == "disabled"
    assert {k["key_id"]: k["state"] for k in by_name["alpha"]["keys"]} == {
        "KEY_A": "cooling",
        "KEY_B": "cooling",
    }
    beta_usage = by_name["beta"]["usage"][0]
    assert (beta_usage["key_id"], beta_usage["invocations"], beta_usage["failures"]) == (
        "KEY_A",
        2,
        0,
    )


async def test_a_transient_error_is_retried_in_place_within_the_budget(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("server_error", count=1, status=503))
    async with start_router(**cloud(alpha, beta)) as router:
        text, route = await ask(router.url)
    assert text == expected_text(PRIMARY, PROMPT, TOKENS)
    assert calls(route) == [("alpha", "KEY_A", "transient"), ("alpha", "KEY_A", "ok")]


async def test_a_hanging_provider_ends_at_the_deadline_with_no_call_after_it(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("hang"))
    async with (
        start_router(**cloud(alpha, beta, fallbacks=[FALLBACK])) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        answer = await http.post(
            "/infer", json={"model": PRIMARY, "prompt": PROMPT, "timeout_ms": 500}
        )
    body = answer.json()
    # Without the deadline the hang would last until the client's own 10 s timeout.
    assert answer.status_code == 504, body
    assert body["error"]["code"] == "DEADLINE_EXCEEDED"
    assert calls(body["route"]) == [("alpha", "KEY_A", "DEADLINE_EXCEEDED")]
    assert alpha.key_calls == {SECRETS["KEY_A"]: 1}
    assert beta.key_calls == {}


async def test_a_hanging_key_is_left_after_its_first_answer_timeout_within_the_budget(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    """A hang is a transient failure once `first_answer_timeout_s` passes (retried in place,
    then the next model), not the end of the request's whole budget."""
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("hang"))
    settings = cloud(alpha, beta, fallbacks=[FALLBACK])
    settings["failover"] = {**settings["failover"], "first_answer_timeout_s": 0.3}
    async with start_router(**settings) as router:
        text, route = await ask(router.url)
    assert text == expected_text(FALLBACK, PROMPT, TOKENS)
    assert calls(route) == [
        ("alpha", "KEY_A", "transient"),
        ("alpha", "KEY_A", "transient"),
        ("alpha", "KEY_A", "transient"),
        ("beta", "KEY_A", "ok"),
    ]


async def test_a_stream_fails_over_before_its_first_token(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("rate_limited", retry_after_s=30))
    async with start_router(**cloud(alpha, beta)) as router, client(router.url) as openai_client:
        stream = await openai_client.chat.completions.create(
            model=PRIMARY, messages=MESSAGES, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces) == expected_text(PRIMARY, PROMPT, TOKENS)
    assert alpha.key_calls == {SECRETS["KEY_A"]: 1, SECRETS["KEY_B"]: 1}


async def test_a_streamed_cloud_tool_call_reaches_the_client_as_the_whole_answers_calls(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    asked: Any = [{"role": "user", "content": ASK_WEATHER}]
    tools: Any = [WEATHER_TOOL]
    async with start_router(**cloud(alpha, beta)) as router, client(router.url) as openai_client:
        whole = await openai_client.chat.completions.create(
            model=PRIMARY, messages=asked, tools=tools
        )
        stream = await openai_client.chat.completions.create(
            model=PRIMARY, messages=asked, tools=tools, stream=True
        )
        assembler, finishes = ToolCallAssembler(), []
        async for chunk in stream:
            for choice in chunk.choices:
                finishes.append(choice.finish_reason)
                for piece in choice.delta.tool_calls or ():
                    assembler.add([ToolCallDelta.model_validate(piece.model_dump())])
    assert whole.choices[0].message.tool_calls is not None
    expected = [call.model_dump() for call in whole.choices[0].message.tool_calls]
    assert expected
    assert [call.model_dump() for call in assembler.calls()] == expected
    assert [reason for reason in finishes if reason] == ["tool_calls"]
    assert alpha.key_calls == {SECRETS["KEY_A"]: 2}


async def test_a_stream_whose_key_sends_no_first_token_in_time_fails_over(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("hang"))
    settings = cloud(alpha, beta, fallbacks=[FALLBACK])
    settings["failover"] = {**settings["failover"], "first_answer_timeout_s": 0.3}
    async with start_router(**settings) as router, client(router.url) as openai_client:
        stream = await openai_client.chat.completions.create(
            model=PRIMARY, messages=MESSAGES, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces) == expected_text(FALLBACK, PROMPT, TOKENS)
    assert alpha.key_calls == {SECRETS["KEY_A"]: 3}  # the first try and two in place
    assert beta.key_calls == {SECRETS["KEY_A"]: 1}


async def test_everything_cooling_is_an_answer_with_retry_after(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    for name in ("KEY_A", "KEY_B"):
        alpha.set_key(SECRETS[name], KeyBehaviour("rate_limited", retry_after_s=30))
    async with start_router(**cloud(alpha, beta)) as router:
        with pytest.raises(openai.APIStatusError) as first:
            await ask(router.url)
        with pytest.raises(openai.APIStatusError) as second:
            await ask(router.url)
    for raised in (first.value, second.value):
        assert raised.status_code == 503
        assert raised.response.headers["Retry-After"] in ("29", "30")
        assert "cooling" in raised.message
    assert alpha.key_calls == {SECRETS["KEY_A"]: 1, SECRETS["KEY_B"]: 1}  # second: none asked


async def test_an_exhausted_chain_answer_names_each_models_state_and_reason(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("revoked"))
    alpha.set_key(SECRETS["KEY_B"], KeyBehaviour("no_balance"))
    beta.set_key(SECRETS["KEY_A"], KeyBehaviour("rate_limited", retry_after_s=6))
    async with start_router(**cloud(alpha, beta, fallbacks=[FALLBACK])) as router:
        with pytest.raises(openai.APIStatusError) as raised:
            await ask(router.url)
    error = raised.value
    assert error.status_code == 503
    assert f"alpha/{PRIMARY} disabled (quota" in error.message
    assert f"beta/{FALLBACK} keys cooling (rate_limited" in error.message


async def test_a_cloud_profile_goes_to_its_provider_chain(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    profiles = {"llm_profiles": {"smart": {"provider": "alpha", "model": PRIMARY}}}
    async with start_router(**cloud(alpha, beta, **profiles)) as router:
        text, route = await ask(router.url, model="smart")
    assert text == expected_text(PRIMARY, PROMPT, TOKENS)
    assert calls(route) == [("alpha", "KEY_A", "ok")]
    assert route["profile"] is None or route["profile"] == "smart"


async def test_fleet_models_reach_the_cloud_only_through_configured_fallbacks(
    simulator: Simulator,
    alpha: Simulator,
    beta: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        async with start_router(**cloud(alpha, beta)) as router:
            text, route = await ask(router.url, model=FLEET_MODEL)
            simulator.set_fault(FLEET_MODEL, Fault("error"))
            with pytest.raises(openai.APIStatusError):
                await ask(router.url, model=FLEET_MODEL)  # no fallbacks: it stays here
        assert text == expected_text(FLEET_MODEL, PROMPT, 8)
        assert [a["via"] for a in route["attempts"]] == ["remote"]
        assert alpha.key_calls == {}
        assert beta.key_calls == {}
        async with start_router(**cloud(alpha, beta, fallbacks=[PRIMARY])) as router:
            text, route = await ask(router.url, model=FLEET_MODEL)
    assert text == expected_text(PRIMARY, PROMPT, TOKENS)
    vias = [a["via"] for a in route["attempts"]]
    assert vias[0] == "remote"
    assert vias[-1] == "cloud"
    assert calls(route)[-1] == ("alpha", "KEY_A", "ok")


async def test_keys_never_appear_in_logs_answers_or_views(
    alpha: Simulator,
    beta: Simulator,
    start_router: RouterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # A careless provider repeats the key in its error: the router must not pass it on.
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("revoked", echo_key=True))
    alpha.set_key(SECRETS["KEY_B"], KeyBehaviour("rate_limited", retry_after_s=30))
    seen: list[str] = []
    async with (
        start_router(**cloud(alpha, beta)) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        for stream in (False, True):
            answer = await http.post(
                "/v1/chat/completions",
                json={"model": PRIMARY, "messages": MESSAGES, "stream": stream},
            )
            seen.append(answer.text)
        answer = await http.post("/infer", json={"model": PRIMARY, "prompt": PROMPT})
        seen.append(answer.text)
        seen.append((await http.get("/providers")).text)
        seen.append((await http.get("/metrics")).text)
    assert "KEY_A" in seen[-2]
    assert "inferbus_router_cloud_invocations" in seen[-1]
    assert any("auth" in text for text in seen)
    assert "Incorrect API key provided: ***." in seen[-2]  # the echoed key, blanked out
    for secret in SECRETS.values():
        assert secret not in caplog.text
        assert all(secret not in text for text in seen)


async def test_max_tokens_above_the_ceiling_is_dropped_once_and_retried(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("max_tokens_ceiling", ceiling=100))
    async with start_router(**cloud(alpha, beta)) as router:
        text, route = await ask(router.url, max_tokens=1000)
    assert text == expected_text(PRIMARY, PROMPT, TOKENS)
    assert calls(route) == [("alpha", "KEY_A", "output_limit"), ("alpha", "KEY_A", "ok")]


async def test_a_request_too_long_for_the_context_returns_at_once(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_key(SECRETS["KEY_A"], KeyBehaviour("context_exceeded"))
    async with start_router(**cloud(alpha, beta, fallbacks=[FALLBACK])) as router:
        with pytest.raises(openai.BadRequestError):
            await ask(router.url)
    # Failing over would only hide it: no other key, no fallback model is asked.
    assert alpha.key_calls == {SECRETS["KEY_A"]: 1}
    assert beta.key_calls == {}


async def test_a_stream_that_broke_after_its_first_token_does_not_fail_over(
    alpha: Simulator, beta: Simulator, start_router: RouterFactory
) -> None:
    alpha.set_fault(PRIMARY, Fault("error", after_chunks=2))
    async with (
        start_router(**cloud(alpha, beta, fallbacks=[FALLBACK])) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
        http.stream(
            "POST", "/infer", json={"model": PRIMARY, "prompt": PROMPT, "stream": True}
        ) as answer,
    ):
        lines = [json.loads(line) async for line in answer.aiter_lines() if line]
    assert lines[-1]["status"] == "error", lines
    assert "".join(line.get("delta", "") for line in lines[:-1])  # pieces came first
    assert alpha.key_calls == {SECRETS["KEY_A"]: 1}
    assert beta.key_calls == {}


async def test_a_key_variable_that_is_unset_stops_start_up_naming_it(
    alpha: Simulator, beta: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEY_B")
    settings = RouterSettings(http={"host": "127.0.0.1", "port": 0}, **cloud(alpha, beta))
    with pytest.raises(StartupError, match="KEY_B is not set"):
        RouterService(settings)
