"""The cloud health board: key cooldowns per (provider, key) pair and per-model health."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from router.cloud.cooldowns import CloudHealthBoard, FailoverSettings, cooldown_seconds
from services.errors import Reason

SETTINGS = FailoverSettings()


@pytest.mark.parametrize(
    ("hits", "retry_after_s", "expected"),
    [
        (0, None, 5.0),  # the floor
        (1, None, 10.0),
        (2, None, 20.0),
        (5, None, 160.0),
        (6, None, 300.0),  # 320 capped
        (40, None, 300.0),
        (10_000, None, 300.0),  # no overflow
        (0, 2.0, 5.0),  # a shorter Retry-After never shortens the floor
        (0, 42.0, 42.0),  # a longer one wins
        (6, 900.0, 900.0),  # even past the backoff cap
        (0, 86_400.0, 3600.0),  # but not past retry_after_max_s
    ],
)
def test_cooldown_grows_from_five_seconds_to_the_cap_and_honours_longer_retry_after(
    hits: int, retry_after_s: float | None, expected: float
) -> None:
    assert cooldown_seconds(hits, retry_after_s, SETTINGS) == expected


def test_cooldown_numbers_are_configurable() -> None:
    settings = FailoverSettings(cooldown_min_s=1, cooldown_max_s=8, cooldown_factor=3)
    assert [cooldown_seconds(h, None, settings) for h in range(4)] == [1, 3, 8, 8]


def test_inconsistent_numbers_fail_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"failover\.cooldown_min_s"):
        FailoverSettings(cooldown_min_s=10, cooldown_max_s=5)
    with pytest.raises(ValidationError, match="transient_backoffs_s"):
        FailoverSettings(transient_backoffs_s=())


def test_a_cooldown_on_one_provider_never_blocks_a_sibling_using_the_same_key_name() -> None:
    board = CloudHealthBoard()
    board.cool_key("kimi", "default", Reason.RATE_LIMITED, now=100)
    assert board.key_cooling_until("kimi", "default", 100) == 105
    assert board.key_cooling_until("deepseek", "default", 100) is None
    assert board.key_cooling_until("kimi", "OTHER_KEY", 100) is None


def test_cooldown_ends_at_its_time() -> None:
    board = CloudHealthBoard()
    until = board.cool_key("p", "A", Reason.AUTH, now=0)
    assert board.key_cooling_until("p", "A", until - 0.001) == until
    assert board.key_cooling_until("p", "A", until) is None


def test_a_key_failing_again_soon_after_its_cooldown_cools_longer() -> None:
    board = CloudHealthBoard()
    lengths = []
    now = 0.0
    for _ in range(8):
        until = board.cool_key("p", "A", Reason.RATE_LIMITED, now)
        lengths.append(until - now)
        now = until  # fails again the moment it is let back
    assert lengths == [5, 10, 20, 40, 80, 160, 300, 300]


def test_retry_after_longer_than_the_backoff_sets_the_cooldown() -> None:
    board = CloudHealthBoard()
    assert board.cool_key("p", "A", Reason.RATE_LIMITED, 0, retry_after_s=30) == 30


def test_a_fixed_length_cooldown_is_used_as_given() -> None:
    board = CloudHealthBoard()
    assert board.cool_key("p", "A", Reason.QUOTA, 0, seconds=600) == 600


def test_a_success_forgets_the_pairs_history() -> None:
    board = CloudHealthBoard()
    board.cool_key("p", "A", Reason.RATE_LIMITED, 0)
    board.cool_key("p", "A", Reason.RATE_LIMITED, 5)
    board.key_succeeded("p", "A", 10)
    assert board.cool_key("p", "A", Reason.RATE_LIMITED, 20) == 25


def test_long_expired_entries_are_collected_and_their_hits_forgotten() -> None:
    board = CloudHealthBoard()
    board.cool_key("p", "A", Reason.RATE_LIMITED, 0)  # until 5
    board.cool_key("q", "B", Reason.RATE_LIMITED, 0)
    assert board.key_entry("p", "A", 5 + 299) is not None  # remembered, not cooling
    assert board.key_states(now=5 + 300) == ()  # what /providers would show
    assert board.cool_key("p", "A", Reason.RATE_LIMITED, 400) == 405  # back at the floor


def test_a_read_collects_the_entry_it_finds_expired() -> None:
    board = CloudHealthBoard()
    board.cool_key("p", "A", Reason.RATE_LIMITED, 0)
    assert board.key_cooling_until("p", "A", 1_000) is None
    assert board.cool_key("p", "A", Reason.RATE_LIMITED, 1_000) == 1_005  # its hits forgotten


# --- model health -------------------------------------------------------------------------


def test_models_are_healthy_until_told_otherwise() -> None:
    board = CloudHealthBoard()
    assert board.model_status("p", "m", 0) == "healthy"
    assert board.model_callable("p", "m", 0)


def test_a_cooling_model_is_skipped_until_its_cooling_ends() -> None:
    board = CloudHealthBoard(FailoverSettings(model_cooling_s=30))
    board.cool_model("p", "m", Reason.TRANSIENT, now=10)
    assert (board.model_status("p", "m", 39.9), board.model_callable("p", "m", 39.9)) == (
        "cooling",
        False,
    )
    assert board.model_status("p", "m", 40) == "healthy"
    assert board.model_states(40) == ()  # collected on that read


def test_a_disabled_model_is_rechecked_after_its_period_and_healed_by_a_success() -> None:
    board = CloudHealthBoard(FailoverSettings(disabled_recheck_s=600))
    board.disable_model("p", "m", Reason.QUOTA, now=0, message="Insufficient Balance")
    entry = board.model_entry("p", "m", 1)
    assert entry is not None
    assert (entry.status, entry.reason, entry.since, entry.message) == (
        "disabled",
        Reason.QUOTA,
        0,
        "Insufficient Balance",
    )
    assert not board.model_callable("p", "m", 599)
    assert board.model_status("p", "m", 600) == "rechecking"
    assert board.model_callable("p", "m", 600)
    board.model_succeeded("p", "m", 600)
    assert board.model_status("p", "m", 601) == "healthy"


def test_a_failed_recheck_disables_anew_from_then() -> None:
    board = CloudHealthBoard(FailoverSettings(disabled_recheck_s=600))
    board.disable_model("p", "m", Reason.MODEL_MISSING, now=0)
    board.disable_model("p", "m", Reason.MODEL_MISSING, now=700)
    assert not board.model_callable("p", "m", 1_000)
    assert board.model_callable("p", "m", 1_300)


def test_cooling_never_shortens_a_disable() -> None:
    board = CloudHealthBoard()
    board.disable_model("p", "m", Reason.AUTH, now=0)
    board.cool_model("p", "m", Reason.TRANSIENT, now=1)
    assert board.model_status("p", "m", 100) == "disabled"


def test_model_health_is_per_provider() -> None:
    board = CloudHealthBoard()
    board.disable_model("openai", "gpt-4o", Reason.QUOTA, now=0)
    assert board.model_callable("openrouter", "gpt-4o", 1)


# --- a burst of answers while the key already cools -----------------------------------------

RL, QUOTA, AUTH = Reason.RATE_LIMITED, Reason.QUOTA, Reason.AUTH
BURST_OF_20 = [(10.0 + i / 100, RL, 6.0, None) for i in range(20)]  # arriving over 0.19 s


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        pytest.param(BURST_OF_20, (16.19, 0, RL), id="20 answers with Retry-After 6: one period"),
        pytest.param(
            [*BURST_OF_20, (17.0, RL, 6.0, None)],
            (27.0, 1, RL),
            id="the next period, after the first ended, escalates once",
        ),
        pytest.param(
            [(0.0, RL, None, None), (0.1, RL, None, None), (4.9, RL, None, None)],
            (5.0, 0, RL),
            id="without Retry-After the burst keeps the first cooldown",
        ),
        pytest.param(
            [(0.0, RL, 6.0, None), (0.1, RL, 60.0, None)],
            (60.1, 0, RL),
            id="a longer Retry-After while cooling is the floor",
        ),
        pytest.param(
            [(0.0, RL, 60.0, None), (0.1, RL, 6.0, None)],
            (60.0, 0, RL),
            id="a shorter Retry-After never shortens it",
        ),
        pytest.param(
            [(0.0, RL, 6.0, None), (1.0, QUOTA, None, 600.0)],
            (601.0, 0, QUOTA),
            id="quota while rate limited: its own length and reason, no hit",
        ),
        pytest.param(
            [(0.0, RL, 6.0, None), (1.0, AUTH, None, None)],
            (6.0, 0, AUTH),
            id="auth while cooling takes the reason, keeps the end",
        ),
        pytest.param(
            [(0.0, RL, 86_400.0, None), (1.0, RL, 86_400.0, None)],
            (3601.0, 0, RL),
            id="the Retry-After cap holds while cooling too",
        ),
    ],
)
def test_failures_arriving_while_a_key_cools_escalate_nothing_and_keep_retry_after_as_floor(
    answers: list[tuple[float, Reason, float | None, float | None]],
    expected: tuple[float, int, Reason],
) -> None:
    board = CloudHealthBoard()
    for now, reason, retry_after_s, seconds in answers:
        board.cool_key("p", "A", reason, now, retry_after_s=retry_after_s, seconds=seconds)
    entry = board.key_entry("p", "A", answers[-1][0])
    assert entry is not None
    assert (round(entry.until, 6), entry.hits, entry.reason) == expected
