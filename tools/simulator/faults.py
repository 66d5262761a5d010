"""Fault injection: what goes wrong, for which model, how many times.

A fault is armed per model name (or ``"*"`` for every model) and consumed one request at a
time, so a test can say "fail twice, then recover" and watch a breaker or a retry react.
Faults apply to generation requests only (chat, generate, chat completions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAULT_KINDS: frozenset[str] = frozenset(
    {"error", "not_found", "context_exceeded", "bad_request", "hang", "slow_first_byte", "drop"}
)

EVERY_MODEL = "*"


@dataclass(frozen=True, slots=True)
class Fault:
    """One way for the runtime to misbehave.

    Every kind first waits ``delay_ms``, then:

    - ``error``: HTTP 500 with the runtime's error body. On a stream with
      ``after_chunks > 0``: that many token chunks, then an in-band error (an
      ``{"error": ...}`` NDJSON line / SSE event) and the end of the stream.
    - ``not_found``: HTTP 404, as for an unknown model.
    - ``context_exceeded``: HTTP 400, as for a prompt longer than the context window.
    - ``bad_request``: HTTP 400, as Ollama answers an image that is not valid base64.
    - ``hang``: never answers; the request ends when the client goes away or the
      simulator stops.
    - ``slow_first_byte``: answers normally after the delay.
    - ``drop``: closes the TCP connection without a response. On a stream with
      ``after_chunks > 0``: that many token chunks, then the connection closes mid-body.

    Args:
        kind: one of FAULT_KINDS.
        count: how many requests it applies to; None means until cleared.
        delay_ms: wait before the fault acts (the whole point of ``slow_first_byte``).
        after_chunks: for streams, token chunks sent before ``drop``/``error`` strikes.
    """

    kind: str
    count: int | None = None
    delay_ms: int = 0
    after_chunks: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault.kind must be one of {sorted(FAULT_KINDS)}, got {self.kind!r}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"Fault.count must be >= 1 or None, got {self.count}")
        if self.delay_ms < 0:
            raise ValueError(f"Fault.delay_ms must be >= 0, got {self.delay_ms}")
        if self.after_chunks < 0:
            raise ValueError(f"Fault.after_chunks must be >= 0, got {self.after_chunks}")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "delay_ms": self.delay_ms,
            "after_chunks": self.after_chunks,
        }


@dataclass(slots=True)
class _Armed:
    fault: Fault
    remaining: int | None


class FaultTable:
    """The armed faults, by model name; a model's own fault wins over ``"*"``."""

    def __init__(self) -> None:
        self._armed: dict[str, _Armed] = {}

    def __bool__(self) -> bool:
        return bool(self._armed)

    def set(self, model: str, fault: Fault) -> None:
        """Arm ``fault`` for ``model``, replacing whatever was armed for it."""
        self._armed[model] = _Armed(fault, fault.count)

    def clear(self) -> None:
        self._armed.clear()

    def take(self, model: str) -> Fault | None:
        """The fault that applies to the next request for ``model``, using up one count."""
        key = model if model in self._armed else EVERY_MODEL
        armed = self._armed.get(key)
        if armed is None:
            return None
        if armed.remaining is not None:
            armed.remaining -= 1
            if armed.remaining <= 0:
                del self._armed[key]
        return armed.fault

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Armed faults with their remaining counts, for the control API."""
        return {
            model: {**armed.fault.to_json(), "remaining": armed.remaining}
            for model, armed in self._armed.items()
        }
