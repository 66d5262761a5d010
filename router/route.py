"""How a request was served: the `route` every answer carries, and which answers end
a request wherever they come from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from services.errors import ErrorCode

Via = Literal["remote", "local", "static"]

# Answers that would be the same anywhere: return them, do not try elsewhere.
FINAL_CODES = frozenset(
    {
        ErrorCode.BAD_REQUEST,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.IDEMPOTENCY_MISMATCH,
        ErrorCode.CONTEXT_EXCEEDED,
        ErrorCode.DEADLINE_EXCEEDED,
    }
)


class Attempt(BaseModel):
    via: Via
    node: str | None
    model: str | None
    outcome: str  # "ok" or an error code
    ms: float


class Route(BaseModel):
    """How a request was served, returned with every answer."""

    via: Via | Literal["none"] = "none"
    node: str | None = None
    model: str | None = None
    profile: str | None = None
    attempts: list[Attempt] = []
    fallback_reason: str = ""
    caps_age_s: float | None = None
