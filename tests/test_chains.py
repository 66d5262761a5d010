"""Model chains: building, resolving, walking — and whole requests through the pure pieces.

`drive` below runs router/cloud/chain.py's loop (the one router/cloud/targets.py runs on the
serving path) against a scripted provider and a clock that only moves when the loop waits, so
the real walk, decision and board are exercised with exact times.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from router.attempts.route import Attempt as RouteAttempt
from router.cloud.chain import ChainResult, run_cloud_chain
from router.cloud.chains import (
    ChainCursor,
    ChainExhausted,
    CloudTarget,
    build_chain,
    chain_states,
    next_target,
    request_fallbacks,
    resolve_cloud_chain,
)
from router.cloud.cooldowns import CloudHealthBoard, FailoverSettings
from router.cloud.providers import CloudModel, ProviderConfig
from services.errors import ErrorCode, InferbusError, Reason


@pytest.mark.parametrize(
    ("parts", "chain"),
    [
        (("a", ["b", "c"], ["d"], ["e"]), ("a", "b", "c", "d", "e")),
        (("a", ["a", " b ", "a"], ["b"], ["a", "c"]), ("a", "b", "c")),
        ((None, ["", "  ", "x"], [], []), ("x",)),
        (("", [], [], []), ()),
        (("m", [], [], ["m"]), ("m",)),
    ],
)
def test_chain_is_request_then_fallbacks_deduplicated_blanks_dropped(
    parts: tuple[str | None, list[str], list[str], list[str]], chain: tuple[str, ...]
) -> None:
    assert build_chain(*parts) == chain


@pytest.mark.parametrize(
    ("body", "fallbacks"),
    [
        ({}, ()),
        ({"fallback_models": ["a", "b"]}, ("a", "b")),
        ({"fallbacks": ["a"]}, ("a",)),  # LiteLLM's name
        ({"fallbacks": [{"model": "a"}, "b"]}, ("a", "b")),  # LiteLLM's object form
        ({"fallback_models": ["a"], "fallbacks": ["b"]}, ("a", "b")),
        ({"fallback_models": None}, ()),
    ],
)
def test_request_fallbacks_are_read_under_both_names(
    body: dict[str, object], fallbacks: tuple[str, ...]
) -> None:
    assert request_fallbacks(body) == fallbacks


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"fallback_models": "gpt-4o"}, "fallback_models"),
        ({"fallbacks": [1]}, "fallbacks[0]"),
        ({"fallback_models": ["a", {"name": "b"}]}, "fallback_models[1]"),
    ],
)
def test_malformed_request_fallbacks_are_a_bad_request_naming_the_field(
    body: dict[str, object], field: str
) -> None:
    with pytest.raises(InferbusError) as caught:
        request_fallbacks(body)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert field in caught.value.message


PROVIDERS = {
    "openai": ProviderConfig(
        base_url="https://api.openai.com/v1",
        api_keys=["KEY_A", "KEY_B"],
        models=["gpt-4o", "gpt-4o-mini"],
        aliases={"fast": "gpt-4o-mini"},
    ),
    "deepseek": ProviderConfig(
        base_url="https://api.deepseek.com", api_keys=["KEY_A"], models=["deepseek-chat"]
    ),
}
KEYS: Mapping[str, Sequence[str]] = {"openai": ["KEY_A", "KEY_B"], "deepseek": ["KEY_A"]}


def test_cloud_chain_keeps_claimed_entries_once_per_upstream_model() -> None:
    chain = resolve_cloud_chain(["llama3:8b", "fast", "gpt-4o-mini", "deepseek-chat"], PROVIDERS)
    assert [(m.provider, m.model) for m in chain] == [
        ("openai", "gpt-4o-mini"),
        ("deepseek", "deepseek-chat"),
    ]


# --- whole requests through the pure pieces -------------------------------------------------

OK = None
Outcome = InferbusError | None


def err(
    reason: Reason, code: ErrorCode = ErrorCode.BACKEND_ERROR, retry_after_ms: int | None = None
) -> InferbusError:
    return InferbusError(
        code, f"provider says {reason}", reason=reason, retry_after_ms=retry_after_ms
    )


@dataclass
class Provider:
    """Scripted answers per (provider, key, model); the last answer repeats."""

    script: dict[tuple[str, str, str], list[Outcome]]
    calls: list[tuple[str, str, str, bool]] = field(default_factory=list)

    def call(self, target: CloudTarget, max_tokens: bool) -> Outcome:
        key = (target.provider, target.key_id, target.model.model)
        self.calls.append((*key, max_tokens))
        answers = self.script.get(key, [OK])
        return answers.pop(0) if len(answers) > 1 else answers[0]


@dataclass
class Clock:
    now: float = 1_000.0


Attempt = Callable[[CloudTarget, bool, float], Awaitable[str]]


async def run(
    names: Sequence[str],
    attempt: Attempt,
    board: CloudHealthBoard,
    clock: Clock,
    *,
    budget_s: float = 60.0,
    max_tokens: bool = False,
) -> ChainResult[str]:
    """run_cloud_chain on the fake clock: waiting moves it, nothing else does."""

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    return await run_cloud_chain(
        resolve_cloud_chain(names, PROVIDERS),
        KEYS,
        board,
        attempt,
        deadline=clock.now + budget_s,
        max_tokens_sent=max_tokens,
        clock=lambda: clock.now,
        sleep=sleep,
    )


async def drive(
    names: Sequence[str],
    provider: Provider,
    board: CloudHealthBoard,
    clock: Clock,
    *,
    budget_s: float = 60.0,
    max_tokens: bool = False,
) -> str | InferbusError:
    """One request along its chain; returns "provider/key/model" of the answer, or the error."""

    async def attempt(target: CloudTarget, drop_max_tokens: bool, left_s: float) -> str:
        outcome = provider.call(target, max_tokens and not drop_max_tokens)
        if outcome is not None:
            raise outcome
        return f"{target.provider}/{target.key_id}/{target.model.model}"

    result = await run(names, attempt, board, clock, budget_s=budget_s, max_tokens=max_tokens)
    if result.error is not None:
        return result.error
    assert result.reply is not None
    return result.reply


async def test_the_answer_comes_from_key_b_after_as_429_and_the_next_request_skips_a() -> None:
    board, clock = CloudHealthBoard(), Clock()
    provider = Provider(
        {("openai", "KEY_A", "gpt-4o"): [err(Reason.RATE_LIMITED, retry_after_ms=30_000)]}
    )
    assert await drive(["gpt-4o"], provider, board, clock) == "openai/KEY_B/gpt-4o"
    provider.calls.clear()
    clock.now += 10
    assert await drive(["gpt-4o"], provider, board, clock) == "openai/KEY_B/gpt-4o"
    assert provider.calls == [("openai", "KEY_B", "gpt-4o", False)]  # A not even tried
    clock.now += 21  # Retry-After (30 s) has passed
    provider.calls.clear()
    await drive(["gpt-4o"], provider, board, clock)
    assert provider.calls[0][:2] == ("openai", "KEY_A")


async def test_a_sibling_provider_is_not_cooled_by_the_first_ones_429_on_a_same_named_key() -> None:
    board, clock = CloudHealthBoard(), Clock()
    provider = Provider(
        {
            ("openai", "KEY_A", "gpt-4o"): [err(Reason.RATE_LIMITED)],
            ("openai", "KEY_B", "gpt-4o"): [err(Reason.RATE_LIMITED)],
        }
    )
    assert await drive(["gpt-4o", "deepseek-chat"], provider, board, clock) == (
        "deepseek/KEY_A/deepseek-chat"
    )


async def test_the_chain_reaches_the_fallback_model_when_the_primarys_keys_are_all_out() -> None:
    board, clock = CloudHealthBoard(), Clock()
    provider = Provider(
        {
            ("openai", "KEY_A", "gpt-4o"): [err(Reason.AUTH, ErrorCode.BAD_REQUEST)],
            ("openai", "KEY_B", "gpt-4o"): [err(Reason.QUOTA, ErrorCode.BAD_REQUEST)],
        }
    )
    assert await drive(["gpt-4o", "deepseek-chat"], provider, board, clock) == (
        "deepseek/KEY_A/deepseek-chat"
    )
    assert board.model_status("openai", "gpt-4o", clock.now) == "disabled"


async def test_a_transient_error_is_retried_in_place_within_the_budget() -> None:
    board, clock = CloudHealthBoard(), Clock()
    flaky = err(Reason.TRANSIENT, ErrorCode.BACKEND_UNAVAILABLE)
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [flaky, flaky, OK]})
    started = clock.now
    assert await drive(["gpt-4o"], provider, board, clock) == "openai/KEY_A/gpt-4o"
    assert [call[:2] for call in provider.calls] == [("openai", "KEY_A")] * 3
    assert clock.now - started == 2.5  # 0.5 s, then 2 s


async def test_retries_never_wait_past_the_budget() -> None:
    board, clock = CloudHealthBoard(), Clock()
    flaky = err(Reason.TRANSIENT, ErrorCode.BACKEND_UNAVAILABLE)
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [flaky]})
    started = clock.now
    answer = await drive(["gpt-4o", "deepseek-chat"], provider, board, clock, budget_s=1.0)
    assert answer == "deepseek/KEY_A/deepseek-chat"
    assert clock.now - started <= 1.0
    assert board.model_status("openai", "gpt-4o", clock.now) == "cooling"


async def test_everything_cooling_says_when_the_earliest_cooldown_ends() -> None:
    board, clock = CloudHealthBoard(), Clock()
    board.cool_key("openai", "KEY_A", Reason.RATE_LIMITED, clock.now, retry_after_s=40)
    board.cool_key("openai", "KEY_B", Reason.RATE_LIMITED, clock.now, retry_after_s=12)
    provider = Provider({})
    answer = await drive(["gpt-4o"], provider, board, clock)
    assert isinstance(answer, InferbusError)
    assert (answer.code, answer.retry_after_ms) == (ErrorCode.NO_ROUTE, 12_000)
    assert provider.calls == []


async def test_a_chain_whose_keys_all_answer_429_says_when_the_first_is_free_again() -> None:
    board, clock = CloudHealthBoard(), Clock()
    provider = Provider(
        {
            ("openai", "KEY_A", "gpt-4o"): [err(Reason.RATE_LIMITED, retry_after_ms=40_000)],
            ("openai", "KEY_B", "gpt-4o"): [err(Reason.RATE_LIMITED, retry_after_ms=9_000)],
        }
    )
    answer = await drive(["gpt-4o"], provider, board, clock)
    assert isinstance(answer, InferbusError)
    assert (answer.code, answer.retry_after_ms, answer.reason) == (
        ErrorCode.NO_ROUTE,
        9_000,
        Reason.RATE_LIMITED,
    )


async def test_quota_on_every_key_disables_the_model_until_its_recheck() -> None:
    board, clock = CloudHealthBoard(FailoverSettings(disabled_recheck_s=600)), Clock()
    broke = err(Reason.QUOTA, ErrorCode.BAD_REQUEST)
    provider = Provider(
        {("openai", "KEY_A", "gpt-4o"): [broke], ("openai", "KEY_B", "gpt-4o"): [broke, OK]}
    )
    answer = await drive(["gpt-4o"], provider, board, clock)
    assert isinstance(answer, InferbusError)
    assert answer.reason == Reason.QUOTA
    assert "chain exhausted" in answer.message
    entry = board.model_entry("openai", "gpt-4o", clock.now)
    assert entry is not None
    assert (entry.status, entry.reason) == ("disabled", Reason.QUOTA)
    provider.calls.clear()
    assert isinstance(await drive(["gpt-4o"], provider, board, clock), InferbusError)
    assert provider.calls == []  # skipped while disabled
    clock.now += 600  # re-checked: the quota cooldowns (600 s) are over too
    assert await drive(["gpt-4o"], provider, board, clock) == "openai/KEY_B/gpt-4o"
    assert board.model_status("openai", "gpt-4o", clock.now) == "healthy"


async def test_a_missing_model_is_disabled_and_skipped_by_the_next_request() -> None:
    board, clock = CloudHealthBoard(), Clock()
    gone = err(Reason.MODEL_MISSING, ErrorCode.MODEL_NOT_FOUND)
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [gone]})
    assert await drive(["gpt-4o", "deepseek-chat"], provider, board, clock) == (
        "deepseek/KEY_A/deepseek-chat"
    )
    provider.calls.clear()
    await drive(["gpt-4o", "deepseek-chat"], provider, board, clock)
    assert [call[0] for call in provider.calls] == ["deepseek"]


async def test_max_tokens_over_the_ceiling_is_dropped_once_and_retried() -> None:
    board, clock = CloudHealthBoard(), Clock()
    ceiling = err(Reason.OUTPUT_LIMIT, ErrorCode.BAD_REQUEST)
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [ceiling, OK]})
    assert await drive(["gpt-4o"], provider, board, clock, max_tokens=True) == "openai/KEY_A/gpt-4o"
    assert [call[3] for call in provider.calls] == [True, False]


async def test_max_tokens_ceiling_again_after_dropping_is_a_clear_error() -> None:
    board, clock = CloudHealthBoard(), Clock()
    ceiling = err(Reason.OUTPUT_LIMIT, ErrorCode.BAD_REQUEST)
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [ceiling]})
    answer = await drive(["gpt-4o", "deepseek-chat"], provider, board, clock, max_tokens=True)
    assert isinstance(answer, InferbusError)
    assert answer.reason == Reason.OUTPUT_LIMIT
    assert "lower max_tokens" in answer.message
    assert len(provider.calls) == 2  # never failed over to hide it


@pytest.mark.parametrize("reason", [Reason.BAD_REQUEST, Reason.CONTEXT_EXCEEDED])
async def test_request_faults_return_at_once_without_failing_over(reason: Reason) -> None:
    board, clock = CloudHealthBoard(), Clock()
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [err(reason, ErrorCode.BAD_REQUEST)]})
    answer = await drive(["gpt-4o", "deepseek-chat"], provider, board, clock)
    assert isinstance(answer, InferbusError)
    assert answer.reason == reason
    assert len(provider.calls) == 1
    assert board.key_cooling_until("openai", "KEY_A", clock.now) is None


async def test_unknown_advances_the_chain_without_marking_the_model() -> None:
    board, clock = CloudHealthBoard(), Clock()
    odd = err(Reason.UNKNOWN)
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [odd, odd, odd, OK]})
    assert await drive(["gpt-4o", "deepseek-chat"], provider, board, clock) == (
        "deepseek/KEY_A/deepseek-chat"
    )
    assert board.model_status("openai", "gpt-4o", clock.now) == "healthy"
    assert await drive(["gpt-4o", "deepseek-chat"], provider, board, clock) == "openai/KEY_A/gpt-4o"


async def test_a_deadline_stops_the_chain_and_marks_nothing() -> None:
    board, clock = CloudHealthBoard(), Clock()
    late = err(Reason.TRANSIENT, ErrorCode.DEADLINE_EXCEEDED)
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [late]})
    answer = await drive(["gpt-4o", "deepseek-chat"], provider, board, clock)
    assert isinstance(answer, InferbusError)
    assert answer.code == ErrorCode.DEADLINE_EXCEEDED
    assert len(provider.calls) == 1
    assert board.model_status("openai", "gpt-4o", clock.now) == "healthy"


async def test_walk_skips_cooling_models_and_reports_exhaustion_with_the_earliest_release() -> None:
    board, now = CloudHealthBoard(), 0.0
    chain = (CloudModel("openai", "gpt-4o", "gpt-4o"),)
    cursor = ChainCursor()
    first = next_target(chain, KEYS, board, cursor, now)
    assert isinstance(first, CloudTarget)
    assert first.key_id == "KEY_A"
    cursor.key_done(first)
    board.cool_key("openai", "KEY_B", Reason.RATE_LIMITED, now)
    assert next_target(chain, KEYS, board, cursor, now) == ChainExhausted(5.0)


async def test_every_attempt_is_recorded_for_the_route() -> None:
    board, clock = CloudHealthBoard(), Clock()
    provider = Provider({("openai", "KEY_A", "gpt-4o"): [err(Reason.RATE_LIMITED)]})

    async def attempt(target: CloudTarget, drop_max_tokens: bool, left_s: float) -> str:
        outcome = provider.call(target, False)
        if outcome is not None:
            raise outcome
        return "answer"

    result = await run(["gpt-4o"], attempt, board, clock, budget_s=5)
    assert result.reply == "answer"
    assert result.target is not None
    assert result.target.key_id == "KEY_B"
    assert result.attempts == [
        RouteAttempt(
            via="cloud",
            node=None,
            provider="openai",
            key_id="KEY_A",
            model="gpt-4o",
            outcome="rate_limited",
            ms=0.0,
        ),
        RouteAttempt(
            via="cloud",
            node=None,
            provider="openai",
            key_id="KEY_B",
            model="gpt-4o",
            outcome="ok",
            ms=0.0,
        ),
    ]


async def test_the_attempt_is_told_the_budget_left_and_nothing_starts_after_the_deadline() -> None:
    board, clock = CloudHealthBoard(), Clock()
    budgets: list[float] = []

    async def attempt(target: CloudTarget, drop_max_tokens: bool, left_s: float) -> str:
        budgets.append(left_s)
        clock.now += 3  # each call takes 3 s and fails transiently
        raise err(Reason.TRANSIENT, ErrorCode.BACKEND_UNAVAILABLE)

    result = await run(["gpt-4o", "deepseek-chat"], attempt, board, clock, budget_s=5)
    assert budgets == [5.0, 1.5]  # 3 s call + 0.5 s wait; the 2 s wait would cross it
    assert result.error is not None
    assert result.error.reason == Reason.TRANSIENT


async def test_an_exhausted_chain_names_each_models_state_and_reason() -> None:
    """gpt-4o's keys: revoked and out of balance (the model is disabled: quota); the
    fallback's only key rate limited. The answer says so per model, with the first
    model's reason, not rate_limited for the whole chain."""
    board, clock = CloudHealthBoard(FailoverSettings(disabled_recheck_s=600)), Clock()
    provider = Provider(
        {
            ("openai", "KEY_A", "gpt-4o"): [err(Reason.AUTH)],
            ("openai", "KEY_B", "gpt-4o"): [err(Reason.QUOTA)],
            ("deepseek", "KEY_A", "deepseek-chat"): [
                err(Reason.RATE_LIMITED, retry_after_ms=6_000)
            ],
        }
    )
    first = await drive(["gpt-4o", "deepseek-chat"], provider, board, clock)
    again = await drive(["gpt-4o", "deepseek-chat"], provider, board, clock)
    for answer in (first, again):
        assert isinstance(answer, InferbusError)
        assert (answer.code, answer.reason, answer.retry_after_ms) == (
            ErrorCode.NO_ROUTE,
            Reason.QUOTA,
            6_000,
        )
        assert "openai/gpt-4o disabled (quota, 600.0 s left)" in answer.message
        assert "deepseek/deepseek-chat keys cooling (rate_limited, 6.0 s left)" in answer.message
    assert len(provider.calls) == 3  # the second request asked nobody


@pytest.mark.parametrize(
    ("prepare", "described"),
    [
        (lambda board: None, ["openai/gpt-4o healthy"]),
        (
            lambda board: board.cool_model("openai", "gpt-4o", Reason.TRANSIENT, 0),
            ["openai/gpt-4o cooling (transient, 30.0 s left)"],
        ),
        (
            lambda board: board.disable_model("openai", "gpt-4o", Reason.MODEL_MISSING, -600),
            ["openai/gpt-4o rechecking"],
        ),
        (
            lambda board: [
                board.cool_key("openai", key, Reason.RATE_LIMITED, 0, retry_after_s=seconds)
                for key, seconds in (("KEY_A", 40), ("KEY_B", 12))
            ],
            ["openai/gpt-4o keys cooling (rate_limited, 12.0 s left)"],
        ),
        (
            lambda board: board.cool_key("openai", "KEY_A", Reason.AUTH, 0),
            ["openai/gpt-4o healthy"],  # KEY_B is still there to try
        ),
    ],
)
def test_chain_states_describe_the_model_or_its_keys(
    prepare: Callable[[CloudHealthBoard], object], described: list[str]
) -> None:
    board = CloudHealthBoard()
    prepare(board)
    chain = (CloudModel("openai", "gpt-4o", "gpt-4o"),)
    assert [state.describe(0) for state in chain_states(chain, KEYS, board, 0)] == described
