"""How a request was served: the `route` record every answer carries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Via = Literal["remote", "local", "static", "cloud"]


class Attempt(BaseModel):
    """One try at one target: its kind (`via`), where (node, or provider and key id),
    which model, how it ended and how long it took."""

    via: Via
    node: str | None
    model: str | None
    outcome: str  # "ok", an error code, or (cloud) the failure's reason
    ms: float
    provider: str | None = None  # cloud: the provider's name
    key_id: str | None = None  # cloud: the key's id (its env var's name), never the key


class Route(BaseModel):
    """How a request was served, returned with every answer."""

    via: Via | Literal["none"] = "none"
    node: str | None = None
    provider: str | None = None  # cloud: the provider that answered
    model: str | None = None
    profile: str | None = None
    attempts: list[Attempt] = []
    fallback_reason: str = ""
    caps_age_s: float | None = None
    queue_ms: float = 0.0  # time spent waiting in the router's line for a slot
    priority: str | None = None  # the class it ran in (router/admission/tenants.py)
    priority_note: str = ""  # why that class, when the request asked for another
