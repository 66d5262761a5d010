"""What a reload applies and what waits for a restart, by table."""

from __future__ import annotations

from typing import Any

import pytest

from router.config import RouterSettings
from router.reload import plan_reload
from services.settings import load_settings

BASE: dict[str, Any] = {
    "http": {"port": 8123, "api_keys": [{"name": "a", "key": "key-a"}]},
    "admission": {"max_wait_ms": 1000},
}


def settings(**changes: Any) -> RouterSettings:
    values = {**BASE, **changes}
    return load_settings(RouterSettings, None, **values)


@pytest.mark.parametrize(
    ("changes", "applied", "needs_restart"),
    [
        ({}, (), ()),
        ({"http": {"port": 8123, "api_keys": [{"name": "a", "key": "key-b"}]}},
         ("http.api_keys",), ()),
        ({"http": {"port": 8123, "api_keys": [{"name": "a", "key": "key-a", "rpm": 5}]}},
         ("http.api_keys",), ()),
        ({"http": {"port": 9000, "api_keys": [{"name": "a", "key": "key-a"}]}}, (), ("http",)),
        ({"admission": {"max_wait_ms": 5}}, ("admission",), ()),
        ({"llm_profiles": {"fast": {"model": "m:1b"}}}, ("selection",), ()),
        ({"fallbacks": ["gpt-4o-mini"]}, ("fallbacks",), ()),
        ({"offload": {"attempts": 5}}, (), ("offload",)),
        ({"nats_url": ["nats://10.0.0.1:4222"]}, (), ("nats_url",)),
    ],
)  # fmt: skip
def test_a_reload_applies_tenants_admission_selection_and_cloud_and_names_the_rest(
    changes: dict[str, Any], applied: tuple[str, ...], needs_restart: tuple[str, ...]
) -> None:
    running = settings()
    plan = plan_reload(running, settings(**changes))
    assert plan.applied == applied
    assert plan.needs_restart == needs_restart
    assert plan.settings.http.port == running.http.port  # never moved by a reload
    assert plan.settings.offload == running.offload
    loaded = settings(**changes)
    assert plan.settings.admission == loaded.admission
    assert plan.settings.selection == loaded.selection
    assert plan.settings.http.api_keys == loaded.http.api_keys
