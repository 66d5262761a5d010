"""Cooldowns per (provider, key) and health per (provider, model): plain data, clock passed in.

The cloud half of the health board (DESIGN §6), beside the breakers. What outlives a request:

- **Key cooldowns**, keyed by the *pair* (provider, key id): a 429 on provider A's key
  `default` must never block provider B's key of the same name. A cooldown lasts
  `min_s · factor^hits`, between `min_s` and `max_s`; a Retry-After wins when it asks for
  longer (up to `retry_after_max_s`, so a garbage header cannot park a key for a year).
  `hits` counts cooling periods since the key last answered — failures that arrive while
  the key already cools (calls made before its first failure came back) add none, only
  their Retry-After as a floor: the entry outlives its cooldown by `max_s` so that a key
  failing again soon cools longer; after that, or on a success, it is collected.
- **Model health**: `healthy`, `cooling(until)` (its keys failed transiently; skip it a
  while) or `disabled(reason, since)` (quota, model missing, or auth on every key). A
  disabled model is re-checked after `disabled_recheck_s`: it becomes callable again, shows
  as `rechecking`, and its next outcome either heals it or disables it anew.

Reads are O(1) per (provider, key) or (provider, model) and collect what they find expired,
so nothing per request scans the board; `key_states`/`model_states` (the health board's
snapshot, router/attempts/health.py) read it all. Every write that changes a key's or a
model's state is told to the health board's events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.attempts.health import HealthChange, HealthEvents, KeyState, ModelState, ModelStatus
from services.errors import Reason

__all__ = [
    "CloudHealthBoard",
    "FailoverSettings",
    "KeyCooldown",
    "ModelHealth",
    "ModelStatus",
    "cooldown_seconds",
    "retry_after_floor",
]


class FailoverSettings(BaseModel):
    """Every number of the cloud failover chain (config key `failover:`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cooldown_min_s: float = Field(default=5.0, gt=0)
    cooldown_max_s: float = Field(default=300.0, gt=0)
    cooldown_factor: float = Field(default=2.0, ge=1)
    retry_after_max_s: float = Field(default=3600.0, gt=0)
    # An account out of money, a model the provider does not have: re-checked this often.
    quota_cooldown_s: float = Field(default=600.0, gt=0)
    disabled_recheck_s: float = Field(default=600.0, gt=0)
    # A model whose retries in place all failed transiently is skipped this long.
    model_cooling_s: float = Field(default=30.0, gt=0)
    # Retries of the same key in place on transient/unknown, and the wait before each.
    transient_retries: int = Field(default=2, ge=0)
    transient_backoffs_s: tuple[float, ...] = (0.5, 2.0)
    # How long one (provider, key, model) call may take to answer (a stream: to send its
    # first token) before it counts as a transient failure and the chain moves on; the
    # request's budget still bounds the whole chain.
    first_answer_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> FailoverSettings:
        if self.cooldown_min_s > self.cooldown_max_s:
            raise ValueError(
                "failover.cooldown_min_s must not exceed failover.cooldown_max_s "
                f"({self.cooldown_min_s} > {self.cooldown_max_s})"
            )
        if any(wait < 0 for wait in self.transient_backoffs_s):
            raise ValueError("failover.transient_backoffs_s: waits must be >= 0")
        if self.transient_retries and not self.transient_backoffs_s:
            raise ValueError("failover.transient_backoffs_s: one wait per retry is needed")
        return self

    def transient_backoff_s(self, retry_index: int) -> float:
        """The wait before retry `retry_index` (0-based); the last wait repeats."""
        waits = self.transient_backoffs_s
        return waits[min(retry_index, len(waits) - 1)]


def cooldown_seconds(hits: int, retry_after_s: float | None, settings: FailoverSettings) -> float:
    """How long a key cools after its `hits`-th consecutive failure (0-based).

    Exponential from `cooldown_min_s`, capped at `cooldown_max_s`; a Retry-After that asks
    for longer wins, capped at `retry_after_max_s`.
    """
    growth = settings.cooldown_factor ** min(hits, 64)  # 2**64 s is past any cap already
    backoff = min(
        settings.cooldown_max_s, max(settings.cooldown_min_s, settings.cooldown_min_s * growth)
    )
    if retry_after_s is not None and retry_after_s > backoff:
        return min(retry_after_s, settings.retry_after_max_s)
    return backoff


def retry_after_floor(retry_after_s: float | None, settings: FailoverSettings) -> float:
    """What a Retry-After alone asks for (0 without one), capped at `retry_after_max_s`."""
    return min(retry_after_s, settings.retry_after_max_s) if retry_after_s else 0.0


@dataclass(frozen=True, slots=True)
class KeyCooldown:
    """One (provider, key) pair's cooldown: until when, after how many hits, and why."""

    until: float
    hits: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class ModelHealth:
    """One (provider, model)'s health; `since` is when it turned cooling or disabled."""

    status: Literal["cooling", "disabled"]
    reason: Reason
    since: float
    until: float  # cooling: when it ends; disabled: when it is re-checked
    message: str = ""


class CloudHealthBoard:
    """Key cooldowns and model health for every configured provider; mutable, clock-free."""

    def __init__(
        self, settings: FailoverSettings | None = None, events: HealthEvents | None = None
    ) -> None:
        self.settings = settings or FailoverSettings()
        self._events = events if events is not None else HealthEvents()
        self._keys: dict[tuple[str, str], KeyCooldown] = {}
        self._models: dict[tuple[str, str], ModelHealth] = {}

    def _tell(
        self,
        kind: Literal["key", "model"],
        pair: tuple[str, str],
        state: str,
        now: float,
        reason: Reason | None = None,
        until: float | None = None,
    ) -> None:
        if self._events.listening:
            why = None if reason is None else str(reason)
            self._events.emit(HealthChange(kind, pair[0], pair[1], state, now, why, until))

    # --- keys ---------------------------------------------------------------------------

    def _key(self, provider: str, key_id: str, now: float) -> KeyCooldown | None:
        entry = self._keys.get((provider, key_id))
        if entry is not None and now >= entry.until + self.settings.cooldown_max_s:
            del self._keys[provider, key_id]  # long expired: forget its hits too
            return None
        return entry

    def key_cooling_until(self, provider: str, key_id: str, now: float) -> float | None:
        """When the pair's cooldown ends, or None when it may be called now."""
        entry = self._key(provider, key_id, now)
        return entry.until if entry is not None and now < entry.until else None

    def cool_key(
        self,
        provider: str,
        key_id: str,
        reason: Reason,
        now: float,
        *,
        retry_after_s: float | None = None,
        seconds: float | None = None,
    ) -> float:
        """Cool the pair; returns when it ends. `seconds` fixes the length (quota).

        A failure that arrives while the pair is already cooling (a burst of calls made
        before its first failure came back) adds no hit: the cooldown escalates once per
        cooling period. It still lasts at least as long as that answer asks (its
        Retry-After, or `seconds`), and takes that answer's reason.
        """
        entry = self._key(provider, key_id, now)
        if entry is not None and now < entry.until:
            asked = (
                seconds if seconds is not None else retry_after_floor(retry_after_s, self.settings)
            )
            until = max(entry.until, now + asked)
            self._keys[provider, key_id] = KeyCooldown(until, entry.hits, reason)
            return until
        hits = 0 if entry is None else entry.hits + 1
        length = (
            seconds if seconds is not None else cooldown_seconds(hits, retry_after_s, self.settings)
        )
        until = now + length
        self._keys[provider, key_id] = KeyCooldown(until, hits, reason)
        self._tell("key", (provider, key_id), "cooling", now, reason, until)
        return until

    def key_succeeded(self, provider: str, key_id: str, now: float) -> None:
        """The pair answered: its cooldown history is over."""
        if self._keys.pop((provider, key_id), None) is not None:
            self._tell("key", (provider, key_id), "ok", now)

    def key_entry(self, provider: str, key_id: str, now: float) -> KeyCooldown | None:
        """The pair's entry (cooling or remembered), for the /providers view."""
        return self._key(provider, key_id, now)

    # --- models -------------------------------------------------------------------------

    def _model(self, provider: str, model: str, now: float) -> ModelHealth | None:
        entry = self._models.get((provider, model))
        if entry is not None and entry.status == "cooling" and now >= entry.until:
            del self._models[provider, model]
            return None
        return entry

    def model_status(self, provider: str, model: str, now: float) -> ModelStatus:
        entry = self._model(provider, model, now)
        if entry is None:
            return "healthy"
        if entry.status == "disabled" and now >= entry.until:
            return "rechecking"
        return entry.status

    def model_callable(self, provider: str, model: str, now: float) -> bool:
        """Healthy, or disabled long enough to be re-checked."""
        return self.model_status(provider, model, now) in ("healthy", "rechecking")

    def model_entry(self, provider: str, model: str, now: float) -> ModelHealth | None:
        return self._model(provider, model, now)

    def cool_model(self, provider: str, model: str, reason: Reason, now: float) -> None:
        """Skip the model for `model_cooling_s` (never shortens a disable)."""
        entry = self._model(provider, model, now)
        if entry is not None and entry.status == "disabled":
            return
        until = now + self.settings.model_cooling_s
        self._models[provider, model] = ModelHealth("cooling", reason, now, until)
        self._tell("model", (provider, model), "cooling", now, reason, until)

    def disable_model(
        self, provider: str, model: str, reason: Reason, now: float, message: str = ""
    ) -> None:
        """Out of rotation with its reason, until re-checked after `disabled_recheck_s`."""
        until = now + self.settings.disabled_recheck_s
        self._models[provider, model] = ModelHealth("disabled", reason, now, until, message)
        self._tell("model", (provider, model), "disabled", now, reason, until)

    def model_succeeded(self, provider: str, model: str, now: float) -> None:
        if self._models.pop((provider, model), None) is not None:
            self._tell("model", (provider, model), "healthy", now)

    # --- the health board's snapshot ----------------------------------------------------

    def key_states(self, now: float) -> tuple[KeyState, ...]:
        """Every (provider, key) the board remembers, sorted (expired ones collected)."""
        found = []
        for provider, key_id in sorted(self._keys):
            entry = self._key(provider, key_id, now)
            if entry is not None:
                cooling = now < entry.until
                found.append(
                    KeyState(provider, key_id, cooling, entry.until, entry.reason, entry.hits + 1)
                )
        return tuple(found)

    def model_states(self, now: float) -> tuple[ModelState, ...]:
        """Every (provider, model) that is not plainly healthy, sorted."""
        found = []
        for provider, model in sorted(self._models):
            entry = self._model(provider, model, now)
            if entry is not None:
                status = self.model_status(provider, model, now)
                found.append(
                    ModelState(
                        provider,
                        model,
                        status,
                        entry.reason,
                        entry.since,
                        entry.until,
                        entry.message,
                    )
                )
        return tuple(found)
