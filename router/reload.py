"""What a reload of the router's config changes (SIGHUP, `POST /admin/reload`).

Reloaded without a restart: the tenants and their keys (`http.api_keys`), the queue's
classes and bounds (`admission`), profiles, policies and agents (`selection`), and the
cloud (`providers` and their keys, `fallbacks`). Everything else (NATS, the HTTP
listener, offload, breakers, `failover`, fleet bounds, ...) is read at start only: a reload
that changes it says so and leaves it as it runs. A file that does not load or validate
changes nothing. Pure: settings in, the plan out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.config import RouterSettings

__all__ = ["ReloadPlan", "plan_reload"]

# Top-level sections a reload applies; `http.api_keys` is the one part of `http` it does.
RELOADED = ("admission", "selection", "providers", "fallbacks")
CLOUD = frozenset({"selection", "providers", "fallbacks"})


@dataclass(frozen=True)
class ReloadPlan:
    settings: RouterSettings  # the running settings with the reloadable parts replaced
    applied: tuple[str, ...]  # what changed and is applied
    needs_restart: tuple[str, ...]  # what changed and is applied only by a restart

    @property
    def cloud_changed(self) -> bool:
        return bool(CLOUD & set(self.applied))

    def report(self) -> dict[str, Any]:
        return {
            "reloaded": True,
            "applied": list(self.applied),
            "needs_restart": list(self.needs_restart),
        }


def _dump(value: Any) -> Any:
    """A comparable form of a settings value (secrets compared by their value)."""
    if hasattr(value, "get_secret_value"):
        return ("secret", value.get_secret_value())
    if hasattr(value, "model_dump"):
        return {key: _dump(getattr(value, key)) for key in type(value).model_fields}
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_dump(item) for item in value]
    return value


def plan_reload(running: RouterSettings, loaded: RouterSettings) -> ReloadPlan:
    """The settings to run with after `loaded` was read, and what changed."""
    applied: list[str] = []
    needs_restart: list[str] = []
    for name in type(running).model_fields:
        before, after = _dump(getattr(running, name)), _dump(getattr(loaded, name))
        if name == "http":
            if before["api_keys"] != after["api_keys"]:
                applied.append("http.api_keys")
            before = {key: value for key, value in before.items() if key != "api_keys"}
            after = {key: value for key, value in after.items() if key != "api_keys"}
            if before != after:
                needs_restart.append("http")
        elif before != after:
            (applied if name in RELOADED else needs_restart).append(name)
    update: dict[str, Any] = {name: getattr(loaded, name) for name in RELOADED}
    update["http"] = running.http.model_copy(update={"api_keys": loaded.http.api_keys})
    return ReloadPlan(running.model_copy(update=update), tuple(applied), tuple(needs_restart))
