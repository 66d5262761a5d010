"""The health board as a dashboard sees it: one snapshot of breakers, key cooldowns and
model health, and one stream of changes."""

from __future__ import annotations

import logging

import pytest

from router.attempts.board import BreakerBoard, BreakerSettings
from router.attempts.health import (
    HealthBoard,
    HealthChange,
    HealthEvents,
    HealthSnapshot,
    KeyState,
    ModelState,
)
from router.cloud.cooldowns import CloudHealthBoard, FailoverSettings
from services.errors import Reason

FAILOVER = FailoverSettings(cooldown_min_s=5, model_cooling_s=30, disabled_recheck_s=600)


def board() -> tuple[HealthBoard, list[HealthChange]]:
    events = HealthEvents()
    health = HealthBoard(
        BreakerBoard(BreakerSettings(failures_to_open=2, open_s=100), events),
        CloudHealthBoard(FAILOVER, events),
        events,
    )
    seen: list[HealthChange] = []
    health.subscribe(seen.append)
    return health, seen


def test_a_breaker_opening_and_closing_is_told_once_each() -> None:
    health, seen = board()
    breakers = health.breakers
    breakers.record("gpu1", "code", "success", 1)  # closed stays closed: nothing to tell
    breakers.record("gpu1", "code", "failure", 2)
    breakers.record("gpu1", "code", "failure", 3)  # opens (code shares the llm breaker)
    assert not breakers.allows("gpu1", "llm", 50)  # still open: nothing new
    assert breakers.allows("gpu1", "llm", 103)  # half-open: the trial goes
    breakers.record("gpu1", "llm", "success", 104)
    assert seen == [
        HealthChange("breaker", "gpu1", "llm", "open", 3, until=103),
        HealthChange("breaker", "gpu1", "llm", "half_open", 103, until=3 + 100),
        HealthChange("breaker", "gpu1", "llm", "closed", 104),
    ]


def test_a_forgotten_node_says_so_for_each_breaker() -> None:
    health, seen = board()
    health.breakers.record("gpu1", "llm", "success", 1)
    health.breakers.record("gpu1", "vision", "failure", 1)
    health.breakers.forget("gpu1", 9)
    assert [(c.name, c.state, c.at) for c in seen] == [
        ("llm", "forgotten", 9),
        ("vision", "forgotten", 9),
    ]
    assert health.breakers_of("gpu1", 10) == {}


def test_cloud_keys_and_models_tell_their_changes() -> None:
    health, seen = board()
    cloud = health.cloud
    assert isinstance(cloud, CloudHealthBoard)
    cloud.cool_key("alpha", "KEY_A", Reason.RATE_LIMITED, 10, retry_after_s=30)
    cloud.key_succeeded("alpha", "KEY_B", 11)  # it had no entry: no change
    cloud.cool_model("alpha", "gpt", Reason.TRANSIENT, 12)
    cloud.disable_model("beta", "chat", Reason.QUOTA, 13, "no balance")
    cloud.key_succeeded("alpha", "KEY_A", 50)
    cloud.model_succeeded("alpha", "gpt", 51)
    assert seen == [
        HealthChange("key", "alpha", "KEY_A", "cooling", 10, "rate_limited", 40),
        HealthChange("model", "alpha", "gpt", "cooling", 12, "transient", 42),
        HealthChange("model", "beta", "chat", "disabled", 13, "quota", 613),
        HealthChange("key", "alpha", "KEY_A", "ok", 50),
        HealthChange("model", "alpha", "gpt", "healthy", 51),
    ]


def test_one_snapshot_holds_every_board() -> None:
    health, _ = board()
    health.breakers.record("gpu1", "llm", "failure", 1)
    health.breakers.record("gpu1", "llm", "failure", 2)
    cloud = health.cloud
    assert isinstance(cloud, CloudHealthBoard)
    cloud.cool_key("alpha", "KEY_A", Reason.AUTH, 0)
    cloud.disable_model("beta", "chat", Reason.QUOTA, 0, "no balance")
    assert health.snapshot(3) == HealthSnapshot(
        at=3,
        breakers={"gpu1": {"llm": "open"}},
        keys=(KeyState("alpha", "KEY_A", True, 5, Reason.AUTH, 1),),
        models=(ModelState("beta", "chat", "disabled", Reason.QUOTA, 0, 600, "no balance"),),
    )
    later = health.snapshot(200)
    assert later.breakers == {"gpu1": {"llm": "half_open"}}
    assert later.key("alpha", "KEY_A") == KeyState("alpha", "KEY_A", False, 5, Reason.AUTH, 1)
    much_later = health.snapshot(700)
    assert much_later.keys == ()  # long expired: forgotten
    rechecked = much_later.model("beta", "chat")
    assert rechecked is not None
    assert rechecked.status == "rechecking"


def test_a_listener_can_stop_and_one_that_raises_is_logged_and_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = HealthEvents()
    heard: list[str] = []
    stop = events.subscribe(lambda change: heard.append(change.state))

    def broken(change: HealthChange) -> None:
        raise RuntimeError("dashboard bug")

    events.subscribe(broken)
    breakers = BreakerBoard(BreakerSettings(failures_to_open=1), events)
    with caplog.at_level(logging.ERROR, logger="inferbus.router.health"):
        breakers.record("gpu1", "llm", "failure", 1)
    stop()
    stop()  # twice is harmless
    breakers.record("gpu2", "llm", "failure", 1)
    assert heard == ["open"]
    assert "a health listener failed" in caplog.text
    assert events.listening  # the broken one is still there
