"""The simulator playing cloud providers, per API key, over real loopback HTTP.

Each behaviour is checked the way the router will meet it: through our own OpenAI adapter
(whose error edge fills in the reason), through the official `openai` client, and raw.
"""

from __future__ import annotations

import asyncio
import email.utils
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from services.errors import ErrorCode, InferbusError, Reason
from services.runtimes import make_runtime
from services.runtimes.base import ChatCall
from services.runtimes.http import new_http_client
from services.wire import Message, Params
from tests.sim_process import ANNOUNCE, simulator_process
from tools.simulator import KeyBehaviour, SimModel, Simulator, expected_text
from tools.simulator.cloud import parse_key_spec

MODEL = "gpt-sim"
TOKENS = 4
PROMPT = "hello there"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=[SimModel(MODEL)], tokens=TOKENS) as simulator:
        yield simulator


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as http:
        yield http


async def ask(
    sim: Simulator,
    client: httpx.AsyncClient,
    key: str,
    *,
    max_tokens: int | None = None,
    timeout_s: float = 5.0,
) -> str:
    runtime = make_runtime("openai", sim.url, client, api_key=key)
    call = ChatCall(MODEL, [Message(role="user", content=PROMPT)], Params(max_tokens=max_tokens))
    reply = await runtime.chat(call, timeout_s=timeout_s)
    return reply.text


async def refused(sim: Simulator, client: httpx.AsyncClient, key: str, **kw: Any) -> InferbusError:
    with pytest.raises(InferbusError) as caught:
        await ask(sim, client, key, **kw)
    return caught.value


@pytest.mark.parametrize(
    ("behaviour", "code", "reason"),
    [
        # 401/402's code becomes BAD_REQUEST with branch i9-attempts; the reason is what counts.
        (KeyBehaviour("revoked"), None, Reason.AUTH),
        (KeyBehaviour("no_balance"), None, Reason.QUOTA),
        (KeyBehaviour("model_missing"), ErrorCode.MODEL_NOT_FOUND, Reason.MODEL_MISSING),
        (KeyBehaviour("context_exceeded"), ErrorCode.CONTEXT_EXCEEDED, Reason.CONTEXT_EXCEEDED),
        (KeyBehaviour("server_error"), ErrorCode.BACKEND_ERROR, Reason.TRANSIENT),
        (KeyBehaviour("server_error", status=529), ErrorCode.BACKEND_ERROR, Reason.TRANSIENT),
        (KeyBehaviour("server_error", status=503), ErrorCode.BACKEND_UNAVAILABLE, Reason.TRANSIENT),
    ],
    ids=lambda value: getattr(value, "kind", str(value)),
)
async def test_each_key_behaviour_reaches_the_router_edge_with_its_reason(
    sim: Simulator,
    client: httpx.AsyncClient,
    behaviour: KeyBehaviour,
    code: ErrorCode | None,
    reason: Reason,
) -> None:
    sim.set_key("sk-test-bad", behaviour)
    error = await refused(sim, client, "sk-test-bad")
    assert error.reason == reason
    assert code is None or error.code == code
    assert "sk-test-bad" not in error.message


async def test_key_a_is_rate_limited_with_retry_after_while_key_b_answers(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_key("key-a", KeyBehaviour("rate_limited", retry_after_s=30))
    sim.set_key("key-b", KeyBehaviour("ok"))
    error = await refused(sim, client, "key-a")
    assert (error.reason, error.retry_after_ms) == (Reason.RATE_LIMITED, 30_000)
    assert await ask(sim, client, "key-b") == expected_text(MODEL, PROMPT, TOKENS)
    assert sim.key_calls == {"key-a": 1, "key-b": 1}


async def test_retry_after_can_be_an_http_date(sim: Simulator) -> None:
    sim.set_key("key-a", KeyBehaviour("rate_limited", retry_after_s=60, retry_after_date=True))
    async with httpx.AsyncClient(base_url=sim.url) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]},
            headers={"Authorization": "Bearer key-a"},
        )
    assert response.status_code == 429
    when = email.utils.parsedate_to_datetime(response.headers["Retry-After"]).timestamp()
    assert 50 < when - time.time() <= 61


async def test_a_server_error_burst_then_recovery(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_key("key-a", KeyBehaviour("server_error", count=2, status=502))
    for _ in range(2):
        assert (await refused(sim, client, "key-a")).reason == Reason.TRANSIENT
    assert await ask(sim, client, "key-a") == expected_text(MODEL, PROMPT, TOKENS)


async def test_max_tokens_above_the_ceiling_is_refused_and_without_it_answered(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_key("key-a", KeyBehaviour("max_tokens_ceiling", ceiling=1000))
    error = await refused(sim, client, "key-a", max_tokens=32_000)
    assert error.reason == Reason.OUTPUT_LIMIT
    assert await ask(sim, client, "key-a", max_tokens=500)
    assert await ask(sim, client, "key-a")


async def test_a_hanging_key_never_answers_and_the_caller_times_out(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_key("key-a", KeyBehaviour("hang"))
    error = await refused(sim, client, "key-a", timeout_s=0.3)
    assert error.code == ErrorCode.DEADLINE_EXCEEDED
    assert await ask(sim, client, "key-b")  # other keys are unaffected


async def test_required_keys_refuse_strangers_with_401(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.require_keys = True
    sim.set_key("known", KeyBehaviour("ok"))
    assert (await refused(sim, client, "stranger")).reason == Reason.AUTH
    assert await ask(sim, client, "known")


async def test_the_official_openai_client_sees_a_rate_limit_then_the_next_key_answers(
    sim: Simulator,
) -> None:
    sim.set_key("key-a", KeyBehaviour("rate_limited", retry_after_s=7))
    messages: Any = [{"role": "user", "content": PROMPT}]
    limited = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="key-a", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        await limited.chat.completions.create(model=MODEL, messages=messages)
    assert caught.value.response.headers["retry-after"] == "7"
    fine = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="key-b", max_retries=0)
    answer = await fine.chat.completions.create(model=MODEL, messages=messages)
    assert answer.choices[0].message.content == expected_text(MODEL, PROMPT, TOKENS)
    await limited.close()
    await fine.close()


async def test_the_control_api_arms_lists_and_clears_keys(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        armed = await http.post(
            "/_sim/keys", json={"key": "key-a", "kind": "no_balance", "count": 1}
        )
        bad = await http.post("/_sim/keys", json={"key": "key-a", "kind": "bogus"})
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]},
            headers={"x-api-key": "key-a"},
        )
        listed = (await http.get("/_sim/keys")).json()
        cleared = (await http.delete("/_sim/keys")).json()
    assert armed.status_code == 200
    assert armed.json()["keys"]["key-a"]["remaining"] == 1
    assert bad.status_code == 400
    assert "kind must be one of" in bad.json()["error"]
    assert chat.status_code == 402
    assert listed == {"keys": {}, "calls": {"key-a": 1}, "require_keys": False}
    assert cleared == {"keys": {}, "calls": {}, "require_keys": False}


@pytest.mark.parametrize(
    ("spec", "key", "behaviour"),
    [
        (
            "key-a=rate_limited:retry_after_s=30",
            "key-a",
            KeyBehaviour("rate_limited", retry_after_s=30),
        ),
        (
            "b=server_error:count=3,status=503",
            "b",
            KeyBehaviour("server_error", count=3, status=503),
        ),
        ("c=ok", "c", KeyBehaviour("ok")),
        (
            "d=rate_limited:retry_after_date=true",
            "d",
            KeyBehaviour("rate_limited", retry_after_date=True),
        ),
    ],
)
def test_cli_key_specs(spec: str, key: str, behaviour: KeyBehaviour) -> None:
    assert parse_key_spec(spec) == (key, behaviour)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("novalue", "KEY=KIND"),
        ("a=nope", "kind must be one of"),
        ("a=server_error:status=418", "status must be one of"),
        ("a=rate_limited:retry_after_s=soon", "retry_after_s must be an integer"),
        ("a=ok:colour=3", "unknown field"),
    ],
)
def test_bad_cli_key_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_key_spec(spec)


async def test_cli_process_plays_a_provider_per_key() -> None:
    args = ("--port", "0", "--models", MODEL, "--key", "key-a=revoked", "--key", "key-b=ok")
    async with simulator_process(*args) as (process, line):
        url = line.removeprefix(ANNOUNCE)
        body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
            revoked = await http.post(
                "/v1/chat/completions", json=body, headers={"Authorization": "Bearer key-a"}
            )
            fine = await http.post(
                "/v1/chat/completions", json=body, headers={"Authorization": "Bearer key-b"}
            )
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(process.wait(), 20)
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "invalid_api_key"
    assert fine.status_code == 200
    assert exit_code == 0
