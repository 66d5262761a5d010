"""How a request was served: the `route` record every answer carries, one `Attempt` per
call to a target (a node, the local runtime, a static profile, one cloud (provider, key,
model)), whatever its kind."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel

from services.wire import Usage

__all__ = ["Attempt", "Route", "Via", "elapsed_ms"]

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
    # A stream broken here after this many pieces reached the client, then resumed on the
    # next target (which continued the text so far).
    resumed_after: int | None = None
    # A resumed stream's attempts: the tokens each cost (router/attempts/resume.py), which
    # the answer's usage sums.
    usage: Usage | None = None


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
    resumed: int = 0  # times the stream went on on another node after a node was lost


def elapsed_ms(started: float, now: float | None = None) -> float:
    """Milliseconds from `started` to `now` (default: `time.perf_counter()` now), to the
    microsecond: every attempt's and answer's `ms`."""
    end = time.perf_counter() if now is None else now
    return round((end - started) * 1000.0, 3)
