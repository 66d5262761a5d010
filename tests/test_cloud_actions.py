"""The cloud branch of the next-action decision: every row of the reason table."""

from __future__ import annotations

import pytest

from router.cloud.actions import (
    AttemptState,
    CloudDecision,
    Effect,
    apply_effects,
    disable_if_keys_all_out,
    next_cloud_action,
)
from router.cloud.chains import CloudTarget
from router.cloud.cooldowns import CloudHealthBoard, FailoverSettings
from router.cloud.providers import CloudModel
from services.errors import ErrorCode, InferbusError, Reason

SETTINGS = FailoverSettings()
FRESH = AttemptState(remaining_budget_s=60)


def failure(
    reason: Reason | None,
    code: ErrorCode = ErrorCode.BACKEND_ERROR,
    retry_after_ms: int | None = None,
) -> InferbusError:
    return InferbusError(code, f"{reason} happened", retry_after_ms=retry_after_ms, reason=reason)


CASES: list[tuple[str, InferbusError | None, AttemptState, str, tuple[str, ...], float]] = [
    # (case, outcome, state, action, effect kinds, delay_s)
    ("success heals key and model", None, FRESH, "return", ("key_ok", "model_ok"), 0),
    (
        "rate limited cools the key",
        failure(Reason.RATE_LIMITED),
        FRESH,
        "next_key",
        ("cool_key",),
        0,
    ),
    ("auth cools the key", failure(Reason.AUTH), FRESH, "next_key", ("cool_key",), 0),
    ("quota cools the key long", failure(Reason.QUOTA), FRESH, "next_key", ("cool_key_for",), 0),
    (
        "model missing disables the model",
        failure(Reason.MODEL_MISSING, ErrorCode.MODEL_NOT_FOUND),
        FRESH,
        "next_model",
        ("disable_model",),
        0,
    ),
    ("bad request returns at once", failure(Reason.BAD_REQUEST), FRESH, "return", (), 0),
    (
        "context exceeded returns at once",
        failure(Reason.CONTEXT_EXCEEDED, ErrorCode.CONTEXT_EXCEEDED),
        FRESH,
        "return",
        (),
        0,
    ),
    (
        "transient retries in place after 0.5 s",
        failure(Reason.TRANSIENT, ErrorCode.BACKEND_UNAVAILABLE),
        FRESH,
        "retry_in_place",
        (),
        0.5,
    ),
    (
        "second transient retry waits 2 s",
        failure(Reason.TRANSIENT),
        AttemptState(retries_in_place=1, remaining_budget_s=60),
        "retry_in_place",
        (),
        2.0,
    ),
    (
        "transient after two retries cools the model and moves on",
        failure(Reason.TRANSIENT),
        AttemptState(retries_in_place=2, remaining_budget_s=60),
        "next_model",
        ("cool_model",),
        0,
    ),
    (
        "a retry never waits past the budget",
        failure(Reason.TRANSIENT),
        AttemptState(retries_in_place=1, remaining_budget_s=1.5),
        "next_model",
        ("cool_model",),
        0,
    ),
    ("unknown retries in place too", failure(Reason.UNKNOWN), FRESH, "retry_in_place", (), 0.5),
    ("no reason at all is unknown", failure(None), FRESH, "retry_in_place", (), 0.5),
    (
        "unknown after its retries advances without marking the model",
        failure(Reason.UNKNOWN),
        AttemptState(retries_in_place=2, remaining_budget_s=60),
        "next_model",
        (),
        0,
    ),
    (
        "output limit drops max_tokens and retries at once",
        failure(Reason.OUTPUT_LIMIT),
        AttemptState(max_tokens_sent=True, remaining_budget_s=60),
        "retry_in_place",
        (),
        0,
    ),
    (
        "output limit without max_tokens to drop returns",
        failure(Reason.OUTPUT_LIMIT),
        FRESH,
        "return",
        (),
        0,
    ),
    (
        "the caller's deadline stops the chain, marking nothing",
        failure(Reason.TRANSIENT, ErrorCode.DEADLINE_EXCEEDED),
        FRESH,
        "stop",
        (),
        0,
    ),
    (
        "a cancellation stops, marking nothing",
        failure(None, ErrorCode.CANCELLED),
        FRESH,
        "stop",
        (),
        0,
    ),
    (
        "a spent budget stops, still cooling the rate-limited key",
        failure(Reason.RATE_LIMITED),
        AttemptState(remaining_budget_s=0),
        "stop",
        ("cool_key",),
        0,
    ),
]


@pytest.mark.parametrize(
    ("outcome", "state", "action", "effects", "delay_s"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_next_cloud_action(
    outcome: InferbusError | None,
    state: AttemptState,
    action: str,
    effects: tuple[str, ...],
    delay_s: float,
) -> None:
    decision = next_cloud_action(outcome, state, SETTINGS)
    assert (decision.action, tuple(e.kind for e in decision.effects), decision.delay_s) == (
        action,
        effects,
        delay_s,
    )


def test_output_limit_retry_says_to_drop_max_tokens() -> None:
    state = AttemptState(max_tokens_sent=True, remaining_budget_s=60)
    assert next_cloud_action(failure(Reason.OUTPUT_LIMIT), state, SETTINGS).drop_max_tokens


def test_output_limit_again_after_dropping_returns_a_clear_error() -> None:
    state = AttemptState(max_tokens_sent=False, max_tokens_dropped=True, remaining_budget_s=60)
    decision = next_cloud_action(failure(Reason.OUTPUT_LIMIT), state, SETTINGS)
    assert decision.action == "return"
    assert decision.error is not None
    assert decision.error.code == ErrorCode.BAD_REQUEST
    assert "lower max_tokens" in decision.error.message


def test_rate_limit_carries_retry_after_to_the_cooldown() -> None:
    decision = next_cloud_action(
        failure(Reason.RATE_LIMITED, retry_after_ms=42_000), FRESH, SETTINGS
    )
    assert decision.effects[0].retry_after_s == 42.0


def test_retry_counts_and_waits_are_configurable() -> None:
    settings = FailoverSettings(transient_retries=3, transient_backoffs_s=(0.1,))
    waits = [
        next_cloud_action(
            failure(Reason.TRANSIENT),
            AttemptState(retries_in_place=n, remaining_budget_s=9),
            settings,
        )
        for n in range(4)
    ]
    assert [(d.action, d.delay_s) for d in waits] == [
        ("retry_in_place", 0.1),
        ("retry_in_place", 0.1),
        ("retry_in_place", 0.1),
        ("next_model", 0.0),
    ]


TARGET = CloudTarget(0, CloudModel("openai", "gpt-4o", "gpt-4o"), "KEY_A")


def test_effects_land_on_the_targets_pair_and_model() -> None:
    board = CloudHealthBoard()
    apply_effects(board, TARGET, (Effect("cool_key", Reason.RATE_LIMITED, retry_after_s=30),), 0)
    apply_effects(board, TARGET, (Effect("cool_model", Reason.TRANSIENT),), 0)
    assert board.key_cooling_until("openai", "KEY_A", 1) == 30
    assert board.model_status("openai", "gpt-4o", 1) == "cooling"
    apply_effects(board, TARGET, (Effect("key_ok"), Effect("model_ok")), 2)
    assert board.key_cooling_until("openai", "KEY_A", 2) is None
    assert board.model_status("openai", "gpt-4o", 2) == "healthy"


def test_quota_cooldown_lasts_the_configured_period() -> None:
    board = CloudHealthBoard()
    decision = next_cloud_action(failure(Reason.QUOTA), FRESH, SETTINGS)
    apply_effects(board, TARGET, decision.effects, 0)
    assert board.key_cooling_until("openai", "KEY_A", 1) == SETTINGS.quota_cooldown_s


def test_disable_effect_keeps_the_providers_message() -> None:
    board = CloudHealthBoard()
    decision: CloudDecision = next_cloud_action(failure(Reason.MODEL_MISSING), FRESH, SETTINGS)
    apply_effects(board, TARGET, decision.effects, 0)
    entry = board.model_entry("openai", "gpt-4o", 1)
    assert entry is not None
    assert (entry.status, entry.reason, entry.message) == (
        "disabled",
        Reason.MODEL_MISSING,
        "model_missing happened",
    )


@pytest.mark.parametrize(
    ("key_reasons", "disabled_with"),
    [
        ({"A": Reason.QUOTA, "B": Reason.QUOTA}, Reason.QUOTA),
        ({"A": Reason.AUTH, "B": Reason.AUTH}, Reason.AUTH),
        ({"A": Reason.AUTH, "B": Reason.QUOTA}, Reason.QUOTA),
        ({"A": Reason.QUOTA, "B": Reason.RATE_LIMITED}, None),  # B will be back soon
        ({"A": Reason.QUOTA}, None),  # B has not failed
    ],
)
def test_quota_or_auth_on_every_key_disables_the_model(
    key_reasons: dict[str, Reason], disabled_with: Reason | None
) -> None:
    board = CloudHealthBoard()
    for key_id, reason in key_reasons.items():
        board.cool_key("openai", key_id, reason, now=0)
    assert disable_if_keys_all_out(board, TARGET, ["A", "B"], now=1) == disabled_with
    expected = "healthy" if disabled_with is None else "disabled"
    assert board.model_status("openai", "gpt-4o", 1) == expected
