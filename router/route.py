"""How a request was served: the `route` record every answer carries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Via = Literal["remote", "local", "static"]


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
