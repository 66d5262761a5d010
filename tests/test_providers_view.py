"""What /providers will show: states, cooldowns, usage — and never a key."""

from __future__ import annotations

import json

import pytest

from router.cloud.cooldowns import CloudHealthBoard
from router.cloud.providers import ProviderConfig
from router.cloud.usage import UsageLedger, render_providers, scrub_secrets
from services.errors import ErrorCode, InferbusError, Reason
from services.wire import Usage

SECRET_A = "sk-proj-AAAAsecretAAAA0123456789"
SECRET_B = "opaque-token-without-a-prefix-42"

PROVIDERS = {
    "openai": ProviderConfig(
        base_url="https://api.openai.com/v1",
        api_keys=["OPENAI_KEY_A", "OPENAI_KEY_B"],
        models=["gpt-4o-mini"],
    ),
    "local": ProviderConfig(base_url="http://bob:hunter2@10.0.0.5:11434", kind="ollama"),
}


@pytest.mark.parametrize(
    ("text", "secrets", "limit", "expected"),
    [
        (f"bad key {SECRET_B}", [SECRET_B], 200, "bad key ***"),
        (f"Incorrect API key provided: {SECRET_A}.", [], 200, "Incorrect API key provided: ***."),
        ("Authorization: Bearer abc.def.ghi", [], 200, "Authorization: ***"),
        ("http://bob:hunter2@host/x", [], 200, "http://***host/x"),
        ("x" * 300, [], 10, "x" * 9 + "…"),
        (f"{'y' * 5}{SECRET_B}", [SECRET_B], 7, "yyyyy*…"),  # scrubbed before the cut
    ],
)
def test_scrub_secrets(text: str, secrets: list[str], limit: int, expected: str) -> None:
    assert scrub_secrets(text, secrets, limit) == expected


def test_the_view_shows_key_ids_states_cooldowns_and_usage() -> None:
    board, ledger, now = CloudHealthBoard(), UsageLedger(), 100.0
    board.cool_key("openai", "OPENAI_KEY_A", Reason.RATE_LIMITED, now, retry_after_s=30)
    board.disable_model("openai", "gpt-4o", Reason.QUOTA, now - 10)
    ledger.record_success(
        "openai", "OPENAI_KEY_B", "gpt-4o-mini", Usage(prompt_tokens=10, completion_tokens=5), 0.25
    )
    ledger.record_success(
        "openai", "OPENAI_KEY_B", "gpt-4o-mini", Usage(prompt_tokens=1, completion_tokens=1), 0.25
    )
    ledger.record_failure(
        "openai",
        "OPENAI_KEY_A",
        "gpt-4o-mini",
        InferbusError(ErrorCode.BACKEND_UNAVAILABLE, "slow down", reason=Reason.RATE_LIMITED),
    )
    view = render_providers(PROVIDERS, board, ledger, now + 10)
    openai_view, local_view = view["providers"]
    assert openai_view["keys"] == [
        {
            "key_id": "OPENAI_KEY_A",
            "state": "cooling",
            "cooldown_left_s": 20.0,
            "reason": "rate_limited",
            "consecutive_cooldowns": 1,
        },
        {
            "key_id": "OPENAI_KEY_B",
            "state": "ok",
            "cooldown_left_s": 0.0,
            "reason": None,
            "consecutive_cooldowns": 0,
        },
    ]
    assert openai_view["models"] == [
        {"model": "gpt-4o-mini", "state": "healthy"},
        {
            "model": "gpt-4o",
            "state": "disabled",
            "reason": "quota",
            "since_s_ago": 20.0,
            "left_s": 580.0,
        },
    ]
    assert openai_view["usage"] == [
        {
            "key_id": "OPENAI_KEY_A",
            "model": "gpt-4o-mini",
            "invocations": 1,
            "failures": 1,
            "tokens": {"prompt": 0, "completion": 0},
            "cost": 0.0,
            "last_error": {"reason": "rate_limited", "message": "slow down"},
        },
        {
            "key_id": "OPENAI_KEY_B",
            "model": "gpt-4o-mini",
            "invocations": 2,
            "failures": 0,
            "tokens": {"prompt": 11, "completion": 6},
            "cost": 0.5,
            "last_error": None,
        },
    ]
    assert local_view["keys"][0]["key_id"] == "#0"
    assert "hunter2" not in local_view["base_url"]


def test_no_key_ever_appears_in_the_view() -> None:
    board, ledger = CloudHealthBoard(), UsageLedger()
    leaked = InferbusError(
        ErrorCode.BACKEND_ERROR,
        f"HTTP 401: Incorrect API key provided: {SECRET_A}; also {SECRET_B}",
        reason=Reason.AUTH,
    )
    ledger.record_failure("openai", "OPENAI_KEY_A", "gpt-4o-mini", leaked, secrets=[SECRET_B])
    board.cool_key("openai", "OPENAI_KEY_A", Reason.AUTH, 0)
    document = json.dumps(render_providers(PROVIDERS, board, ledger, 1))
    assert SECRET_A not in document
    assert SECRET_B not in document
    assert "OPENAI_KEY_A" in document
    assert "Incorrect API key provided" in document
