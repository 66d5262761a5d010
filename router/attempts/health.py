"""The health board: one interface over everything the router remembers about its targets'
health — circuit breakers per (node, slot kind) (router/attempts/board.py), cooldowns per
cloud (provider, key) and health per cloud (provider, model) (router/cloud/cooldowns.py).

    HealthBoard
    ├── breakers     BreakerBoard: written by node attempts, read by selection
    ├── cloud        the cloud board's read side (`CloudHealth`): written by the chains
    ├── snapshot(now) -> HealthSnapshot   what `/nodes`, `/providers` and metrics show
    ├── breakers_of(node, now)            one node's breakers, O(1) (the `/nodes` pages)
    └── subscribe(listener) -> unsubscribe   every change, as it is written

Change events: each board is given the same `HealthEvents` and tells it every state it
writes that differs from the one before (a breaker opening, a key cooling, a model
disabled, a key answering again...), as a `HealthChange`. A state that ends by time alone
(an open breaker's `open_s` passing, a cooldown running out) is no event of its own: the
change that started it carries `until`, and the next write or snapshot shows the rest.
Listeners are called synchronously on the serving path: they must be quick (append to a
queue) and never raise; one that raises is logged and kept.

Pure: no clock of its own and no I/O; every reader takes `now` (monotonic seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from router.attempts.board import BreakerBoard

__all__ = [
    "CloudHealth",
    "HealthBoard",
    "HealthChange",
    "HealthEvents",
    "HealthKind",
    "HealthListener",
    "HealthSnapshot",
    "KeyState",
    "ModelState",
    "ModelStatus",
    "Unsubscribe",
]

log = logging.getLogger("inferbus.router.health")

HealthKind = Literal["breaker", "key", "model"]
ModelStatus = Literal["healthy", "cooling", "disabled", "rechecking"]


@dataclass(frozen=True, slots=True)
class HealthChange:
    """One state the health board wrote, as a dashboard follows it.

    Attributes:
        kind: "breaker" (owner: node id, name: slot kind; state: closed | open |
            half_open | forgotten), "key" (owner: provider, name: key id; state: cooling |
            ok) or "model" (owner: provider, name: model; state: healthy | cooling |
            disabled).
        at: when, on the router's monotonic clock.
        reason: why a key or model cools or is disabled (rate_limited, quota...).
        until: when the state ends by itself: an open breaker turns half-open, a cooldown
            ends, a disabled model is re-checked.
    """

    kind: HealthKind
    owner: str
    name: str
    state: str
    at: float
    reason: str | None = None
    until: float | None = None


HealthListener = Callable[[HealthChange], None]
Unsubscribe = Callable[[], None]


class HealthEvents:
    """Where the boards tell their changes, and who listens."""

    def __init__(self) -> None:
        self._listeners: list[HealthListener] = []

    def subscribe(self, listener: HealthListener) -> Unsubscribe:
        """Call `listener` with every change from now on; returns how to stop."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    @property
    def listening(self) -> bool:
        """Whether anyone listens (a board need not build a change for nobody)."""
        return bool(self._listeners)

    def emit(self, change: HealthChange) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(change)
            except Exception:  # a dashboard's bug must not fail a request
                log.exception("a health listener failed on %s", change)


@dataclass(frozen=True, slots=True)
class KeyState:
    """One cloud (provider, key id) the board remembers (a key it does not is "ok")."""

    provider: str
    key_id: str
    cooling: bool
    until: float  # when its (last) cooldown ends
    reason: str
    consecutive_cooldowns: int


@dataclass(frozen=True, slots=True)
class ModelState:
    """One cloud (provider, model) that is not plainly healthy."""

    provider: str
    model: str
    status: ModelStatus
    reason: str
    since: float  # when it turned cooling or disabled
    until: float  # cooling: when it ends; disabled: when it is re-checked
    message: str = ""


class CloudHealth(Protocol):
    """The cloud board's read side (router/cloud/cooldowns.py `CloudHealthBoard`)."""

    def key_states(self, now: float) -> tuple[KeyState, ...]: ...

    def model_states(self, now: float) -> tuple[ModelState, ...]: ...


class _NoCloud:
    def key_states(self, now: float) -> tuple[KeyState, ...]:
        return ()

    def model_states(self, now: float) -> tuple[ModelState, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """Everything the board knows at `at`, as plain data."""

    at: float
    breakers: Mapping[str, Mapping[str, str]]  # node → slot kind → closed | open | half_open
    keys: tuple[KeyState, ...]
    models: tuple[ModelState, ...]

    def key(self, provider: str, key_id: str) -> KeyState | None:
        return next((k for k in self.keys if (k.provider, k.key_id) == (provider, key_id)), None)

    def model(self, provider: str, model: str) -> ModelState | None:
        return next((m for m in self.models if (m.provider, m.model) == (provider, model)), None)


class HealthBoard:
    """The router's one health board (module docstring)."""

    def __init__(
        self,
        breakers: BreakerBoard,
        cloud: CloudHealth | None = None,
        events: HealthEvents | None = None,
    ) -> None:
        self.breakers = breakers
        self.cloud: CloudHealth = cloud if cloud is not None else _NoCloud()
        self.events = events if events is not None else HealthEvents()

    def subscribe(self, listener: HealthListener) -> Unsubscribe:
        """Hear every change of every board (see `HealthChange`); returns how to stop."""
        return self.events.subscribe(listener)

    def snapshot(self, now: float) -> HealthSnapshot:
        return HealthSnapshot(
            at=now,
            breakers=self.breakers.snapshot(now),
            keys=self.cloud.key_states(now),
            models=self.cloud.model_states(now),
        )

    def breakers_of(self, node: str, now: float) -> dict[str, str]:
        """Slot kind → status of one node's breakers that have seen a request: O(1)."""
        return self.breakers.of_node(node, now)
