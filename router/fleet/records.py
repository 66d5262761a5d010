"""Decoding heartbeats cheaply: a record whose substance did not change is not re-validated.

A heartbeat is mostly the same bytes as the node's last one. What moves: `seq`, `ts`,
`instance`, `load`, and what a worker says of its runtimes now — `runtimes` (probe
latency, counters of the jobs served: a slot freed by a finished job changes them) and
`running_models` (Ollama's expiry moves with every use). Fully validating a 1.5 KB record
with 5-20 models costs ~70 µs here (pydantic), which at 3,000 nodes on 1 s heartbeats is a
fifth of a core for nothing. So the JSON is parsed (C, a few µs), the node id is read
before anything else (a forged one costs nothing more), the unchanged part (the served
models above all) is compared with the node's previous one (dict equality, in C), and only
the moving fields are validated — with `Capabilities`' own field definitions — and copied
onto the previous record. Anything else gets the full validation. Measured:
`ops/bench/fleet_bench.py`, `ops/bench/announce_bench.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict

from services.capabilities import Capabilities

__all__ = ["Decoded", "RecordDecoder"]

_MOVING = ("seq", "ts", "instance", "load", "runtimes", "running_models")
_IS_MOVING = frozenset(_MOVING)

# The moving fields validated alone, exactly as `Capabilities` validates them.
_Moving: type[BaseModel] = pydantic.create_model(
    "_Moving",
    __config__=ConfigDict(extra="ignore", frozen=True),
    **{
        name: (Capabilities.model_fields[name].annotation, Capabilities.model_fields[name])
        for name in _MOVING
    },  # type: ignore[call-overload]
)


@dataclass(frozen=True)
class Decoded:
    record: Capabilities
    steady: dict[str, Any]  # the record's JSON without its moving fields
    reused: bool  # only the moving fields were validated


class RecordDecoder:
    """Bytes → a record, reusing each node's previous record when only load moved.

    Holds one steady part per node taken (`keep`), none for refused ones, and drops it
    with the node (`forget`).
    """

    def __init__(self) -> None:
        self._steady: dict[str, tuple[dict[str, Any], Capabilities]] = {}

    @staticmethod
    def parse(data: bytes) -> dict[str, Any] | None:
        """The JSON object, or None for anything else (never raises)."""
        try:
            raw = json.loads(data)
        except ValueError:
            return None
        return raw if isinstance(raw, dict) else None

    def decode(self, node: str, raw: dict[str, Any]) -> Decoded | None:
        """A validated record of `node`, or None when `raw` is not one."""
        steady = {key: value for key, value in raw.items() if key not in _IS_MOVING}
        known = self._steady.get(node)
        try:
            if known is not None and known[0] == steady:
                moving = _Moving.model_validate(raw)
                update = {name: getattr(moving, name) for name in _MOVING}
                return Decoded(known[1].model_copy(update=update), steady, reused=True)
            return Decoded(Capabilities.model_validate(raw), steady, reused=False)
        except pydantic.ValidationError:
            return None

    def keep(self, node: str, decoded: Decoded) -> None:
        """Remember a taken record's steady part, to compare the next one with."""
        if not decoded.reused:
            self._steady[node] = (decoded.steady, decoded.record)

    def forget(self, node: str) -> None:
        self._steady.pop(node, None)
