"""The cloud chain over real HTTP: simulators playing two providers, our OpenAI adapter.

Below the router (tests/test_router_cloud.py goes through it): the loop, the board, the
reasons from the runtime edge and the simulator's per-key behaviour meet on loopback.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence

import httpx
import pytest

from router.cloud.chain import ChainResult, run_cloud_chain
from router.cloud.chains import CloudTarget, resolve_cloud_chain
from router.cloud.cooldowns import CloudHealthBoard, FailoverSettings
from router.cloud.providers import ProviderConfig, ProviderKey, resolve_keys
from services.errors import ErrorCode, Reason
from services.runtimes import make_runtime
from services.runtimes.base import ChatCall, Runtime, StreamDelta
from services.runtimes.http import new_http_client
from services.wire import Message, Params
from tests.cloud_sims import FALLBACK, PRIMARY, TOKENS
from tools.simulator import KeyBehaviour, Simulator, expected_text

PROMPT = "hi there"
ENVIRON = {"KEY_A": "sk-sim-aaaa", "KEY_B": "sk-sim-bbbb", "SIBLING_KEY_A": "sk-sim-cccc"}
FAST = FailoverSettings(transient_backoffs_s=(0.05, 0.1))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as http:
        yield http


class Cloud:
    """Two providers on two simulators; `ask` runs one request along the chain."""

    def __init__(self, alpha: Simulator, beta: Simulator, client: httpx.AsyncClient) -> None:
        # beta's key is named like alpha's first key: a 429 on one must not cool the other.
        self.providers = {
            "alpha": ProviderConfig(
                base_url=alpha.url, api_keys=["KEY_A", "KEY_B"], models=[PRIMARY]
            ),
            "beta": ProviderConfig(base_url=beta.url, api_keys=["KEY_A"], models=[FALLBACK]),
        }
        beta_environ = {"KEY_A": ENVIRON["SIBLING_KEY_A"]}
        self.keys: dict[str, tuple[ProviderKey, ...]] = {
            "alpha": resolve_keys("alpha", self.providers["alpha"], ENVIRON),
            "beta": resolve_keys("beta", self.providers["beta"], beta_environ),
        }
        self.keys_of: Mapping[str, Sequence[str]] = {
            name: [key.key_id for key in keys] for name, keys in self.keys.items()
        }
        self.client = client
        self.board = CloudHealthBoard(FAST)

    def runtime(self, target: CloudTarget) -> Runtime:
        """The adapter for the target's provider with the target's key."""
        secret = next(k.secret for k in self.keys[target.provider] if k.key_id == target.key_id)
        url = self.providers[target.provider].base_url
        return make_runtime("openai", url, self.client, api_key=secret)

    async def ask(
        self, chain: Sequence[str], *, budget_s: float = 5.0, max_tokens: int | None = None
    ) -> ChainResult[str]:
        async def attempt(target: CloudTarget, drop_max_tokens: bool, left_s: float) -> str:
            params = Params(max_tokens=None if drop_max_tokens else max_tokens)
            call = ChatCall(target.model.model, [Message(content=PROMPT)], params)
            return (await self.runtime(target).chat(call, timeout_s=left_s)).text

        return await run_cloud_chain(
            resolve_cloud_chain(chain, self.providers),
            self.keys_of,
            self.board,
            attempt,
            deadline=time.monotonic() + budget_s,
            max_tokens_sent=max_tokens is not None,
        )


@pytest.fixture
def cloud(alpha: Simulator, beta: Simulator, client: httpx.AsyncClient) -> Cloud:
    return Cloud(alpha, beta, client)


def key_ids(result: ChainResult[str]) -> list[tuple[str | None, str | None, str]]:
    return [(a.provider, a.key_id, a.outcome) for a in result.attempts]


async def test_key_b_answers_after_key_as_429_and_the_next_request_skips_a(
    cloud: Cloud, alpha: Simulator
) -> None:
    alpha.set_key(ENVIRON["KEY_A"], KeyBehaviour("rate_limited", retry_after_s=30))
    first = await cloud.ask([PRIMARY])
    assert first.reply == expected_text(PRIMARY, PROMPT, TOKENS)
    assert key_ids(first) == [("alpha", "KEY_A", "rate_limited"), ("alpha", "KEY_B", "ok")]
    second = await cloud.ask([PRIMARY])
    assert key_ids(second) == [("alpha", "KEY_B", "ok")]
    assert alpha.key_calls == {ENVIRON["KEY_A"]: 1, ENVIRON["KEY_B"]: 2}


async def test_a_sibling_provider_is_not_cooled_by_the_first_ones_429(
    cloud: Cloud, alpha: Simulator
) -> None:
    for name in ("KEY_A", "KEY_B"):
        alpha.set_key(ENVIRON[name], KeyBehaviour("rate_limited", retry_after_s=30))
    result = await cloud.ask([PRIMARY, FALLBACK])
    assert result.reply == expected_text(FALLBACK, PROMPT, TOKENS)
    assert key_ids(result)[-1] == ("beta", "KEY_A", "ok")  # same key name, other provider


async def test_the_chain_reaches_the_fallback_model_when_the_primarys_keys_are_out(
    cloud: Cloud, alpha: Simulator
) -> None:
    alpha.set_key(ENVIRON["KEY_A"], KeyBehaviour("revoked"))
    alpha.set_key(ENVIRON["KEY_B"], KeyBehaviour("no_balance"))
    result = await cloud.ask([PRIMARY, FALLBACK])
    assert result.reply == expected_text(FALLBACK, PROMPT, TOKENS)
    assert key_ids(result) == [
        ("alpha", "KEY_A", "auth"),
        ("alpha", "KEY_B", "quota"),
        ("beta", "KEY_A", "ok"),
    ]
    assert cloud.board.model_status("alpha", PRIMARY, 0) != "healthy"


async def test_a_transient_error_is_retried_in_place_within_the_budget(
    cloud: Cloud, alpha: Simulator
) -> None:
    alpha.set_key(ENVIRON["KEY_A"], KeyBehaviour("server_error", count=2, status=503))
    result = await cloud.ask([PRIMARY, FALLBACK])
    assert result.reply == expected_text(PRIMARY, PROMPT, TOKENS)
    assert key_ids(result) == [("alpha", "KEY_A", "transient")] * 2 + [("alpha", "KEY_A", "ok")]


async def test_a_hanging_key_ends_with_the_deadline_not_after_it(
    cloud: Cloud, alpha: Simulator
) -> None:
    alpha.set_key(ENVIRON["KEY_A"], KeyBehaviour("hang"))
    result = await cloud.ask([PRIMARY, FALLBACK], budget_s=0.5)
    assert result.error is not None
    assert result.error.code == ErrorCode.DEADLINE_EXCEEDED
    assert len(result.attempts) == 1  # the budget was the attempt's timeout: nothing after


async def test_max_tokens_over_the_ceiling_is_dropped_once(cloud: Cloud, alpha: Simulator) -> None:
    alpha.set_key(ENVIRON["KEY_A"], KeyBehaviour("max_tokens_ceiling", ceiling=100))
    result = await cloud.ask([PRIMARY], max_tokens=10_000)
    assert result.reply == expected_text(PRIMARY, PROMPT, TOKENS)
    assert key_ids(result) == [("alpha", "KEY_A", "output_limit"), ("alpha", "KEY_A", "ok")]


async def test_context_exceeded_returns_at_once_without_failing_over(
    cloud: Cloud, alpha: Simulator, beta: Simulator
) -> None:
    alpha.set_key(ENVIRON["KEY_A"], KeyBehaviour("context_exceeded"))
    result = await cloud.ask([PRIMARY, FALLBACK])
    assert result.error is not None
    assert result.error.reason == Reason.CONTEXT_EXCEEDED
    assert beta.key_calls == {}


async def test_a_stream_fails_over_before_its_first_token(cloud: Cloud, alpha: Simulator) -> None:
    alpha.set_key(ENVIRON["KEY_A"], KeyBehaviour("rate_limited", retry_after_s=30))

    async def first_token(target: CloudTarget, drop_max_tokens: bool, left_s: float) -> str:
        call = ChatCall(target.model.model, [Message(content=PROMPT)])
        async for event in cloud.runtime(target).stream(call, timeout_s=left_s):
            if isinstance(event, StreamDelta) and event.text:
                return event.text  # the target relays this and the rest, never failing over again
        return ""

    result = await run_cloud_chain(
        resolve_cloud_chain([PRIMARY], cloud.providers),
        cloud.keys_of,
        cloud.board,
        first_token,
        deadline=time.monotonic() + 5,
        max_tokens_sent=False,
    )
    assert result.reply
    assert key_ids(result) == [("alpha", "KEY_A", "rate_limited"), ("alpha", "KEY_B", "ok")]
