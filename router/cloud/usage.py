"""What `GET /providers` shows, as plain data, and the scrubbing that keeps keys out of it.

Per provider: its keys by id (the environment variable's name, "#0" for a keyless
provider — never the key), each key's state and cooldown left; its models' health; and per
(key, model) the invocations, failures, tokens, cost and the last error's reason with a
truncated message from which every secret has been removed.

`UsageLedger` is what the serving path (router/cloud/targets.py) records into after each
cloud call; `render_providers` reads it with the cloud part of the health board's snapshot
(`key_states`, `model_states`) and the config, clock passed in. Nothing here does I/O;
`GET /providers` (router/http/operator_providers.py) only serialises it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from router.attempts.health import CloudHealth, KeyState, ModelState
from router.cloud.providers import KEYLESS_ID, ProviderConfig
from services.errors import InferbusError
from services.runtimes.errors import redact
from services.wire import Usage

__all__ = ["MESSAGE_LIMIT", "UsageLedger", "UsageStats", "render_providers", "scrub_secrets"]

MESSAGE_LIMIT = 200


def scrub_secrets(text: str, secrets: Iterable[str] = (), limit: int = MESSAGE_LIMIT) -> str:
    """`text` without the given secrets, bearer tokens, `sk-…` keys or URL passwords,
    cut to `limit` characters (an ellipsis marks the cut).

    Secrets are removed before cutting, so a key split by the cut cannot leak its head.
    """
    clean = redact(text, secrets)
    return clean if len(clean) <= limit else clean[: max(0, limit - 1)] + "…"


@dataclass(slots=True)
class UsageStats:
    """One (provider, key, model)'s counters since the router started."""

    invocations: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    last_error_reason: str | None = None
    last_error_message: str | None = None


class UsageLedger:
    """Counters per (provider, key id, model); messages are scrubbed as they are recorded."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str, str], UsageStats] = {}

    def _entry(self, provider: str, key_id: str, model: str) -> UsageStats:
        return self._stats.setdefault((provider, key_id, model), UsageStats())

    def record_success(
        self, provider: str, key_id: str, model: str, usage: Usage, cost: float | None = None
    ) -> None:
        stats = self._entry(provider, key_id, model)
        stats.invocations += 1
        stats.prompt_tokens += usage.prompt_tokens
        stats.completion_tokens += usage.completion_tokens
        stats.cost = round(stats.cost + (cost or 0.0), 8)

    def record_failure(
        self,
        provider: str,
        key_id: str,
        model: str,
        error: InferbusError,
        secrets: Iterable[str] = (),
    ) -> None:
        stats = self._entry(provider, key_id, model)
        stats.invocations += 1
        stats.failures += 1
        stats.last_error_reason = str(error.reason or error.code)
        stats.last_error_message = scrub_secrets(error.message, secrets)

    def of_provider(self, provider: str) -> list[tuple[str, str, UsageStats]]:
        """(key id, model, stats) rows of one provider, sorted."""
        return sorted(
            (key_id, model, stats)
            for (name, key_id, model), stats in self._stats.items()
            if name == provider
        )


def _key_ids(provider: ProviderConfig) -> list[str]:
    return list(provider.api_keys) or [KEYLESS_ID]


def _key_view(key_id: str, entry: KeyState | None, now: float) -> dict[str, Any]:
    cooling = entry is not None and entry.cooling
    return {
        "key_id": key_id,
        "state": "cooling" if cooling else "ok",
        "cooldown_left_s": round(entry.until - now, 3) if entry is not None and cooling else 0.0,
        "reason": str(entry.reason) if entry is not None and cooling else None,
        "consecutive_cooldowns": entry.consecutive_cooldowns if entry is not None else 0,
    }


def _model_view(model: str, entry: ModelState | None, now: float) -> dict[str, Any]:
    view: dict[str, Any] = {"model": model, "state": entry.status if entry else "healthy"}
    if entry is not None:
        view["reason"] = str(entry.reason)
        view["since_s_ago"] = round(now - entry.since, 3)
        if entry.status in ("cooling", "disabled"):
            view["left_s"] = round(max(0.0, entry.until - now), 3)
    return view


def render_providers(
    providers: Mapping[str, ProviderConfig],
    health: CloudHealth,
    ledger: UsageLedger,
    now: float,
) -> dict[str, Any]:
    """The `/providers` document: JSON-ready, with key ids and never keys."""
    keys = {(k.provider, k.key_id): k for k in health.key_states(now)}
    states = {(m.provider, m.model): m for m in health.model_states(now)}
    rendered = []
    for name, provider in providers.items():
        usage = ledger.of_provider(name)
        models = dict.fromkeys(provider.models or [])
        models.update(dict.fromkeys(model for _key, model, _stats in usage))
        models.update(dict.fromkeys(model for owner, model in states if owner == name))
        rendered.append(
            {
                "provider": name,
                "kind": provider.kind,
                "base_url": scrub_secrets(provider.base_url),
                "keys": [
                    _key_view(key_id, keys.get((name, key_id)), now)
                    for key_id in _key_ids(provider)
                ],
                "models": [_model_view(model, states.get((name, model)), now) for model in models],
                "usage": [
                    {
                        "key_id": key_id,
                        "model": model,
                        "invocations": stats.invocations,
                        "failures": stats.failures,
                        "tokens": {
                            "prompt": stats.prompt_tokens,
                            "completion": stats.completion_tokens,
                        },
                        "cost": stats.cost,
                        "last_error": None
                        if stats.last_error_reason is None
                        else {
                            "reason": stats.last_error_reason,
                            "message": stats.last_error_message,
                        },
                    }
                    for key_id, model, stats in usage
                ],
            }
        )
    return {"providers": rendered}
