"""Decoding heartbeats cheaply: a record whose substance did not change is not re-validated.

A heartbeat is mostly the same bytes as the node's last one. What moves: `seq`, `ts`,
`instance`, `load`, and what a worker says of its runtimes now — `runtimes` (probe
latency, counters of the jobs served: a slot freed by a finished job changes them) and
`running_models` (Ollama's expiry moves with every use). Fully validating a 1.5 KB record
with 5-20 models costs ~70 µs here (pydantic), which at 3,000 nodes on 1 s heartbeats is a
fifth of a core for nothing.

The moving fields come last on the wire (`Capabilities`' field order). So when a record
starts with the bytes its node's last fully validated record had before them (found and
proved on that record: `_steady_prefix`), only the rest is parsed (~400 bytes) and the
node id needs no second look (it is in those bytes). Otherwise the whole JSON is parsed
(C, a few µs), the node id is read before anything else (a forged one costs nothing
more), and the unchanged part (the served models above all) is compared with the node's
previous one (dict equality, in C). Either way only the moving fields are validated —
with `Capabilities`' own field definitions — and copied onto the previous record; anything
else gets the full validation. Measured: `ops/bench/announce_bench.py`,
`ops/bench/fleet_bench.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict

from services.capabilities import Capabilities

__all__ = ["Decoded", "RecordDecoder", "Refused", "parse_object"]

_MOVING = ("seq", "ts", "instance", "load", "runtimes", "running_models")
_IS_MOVING = frozenset(_MOVING)

# The moving fields validated alone, exactly as `Capabilities` validates them.
_Moving: type[BaseModel] = pydantic.create_model(
    "_Moving",
    __config__=ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False),
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
    prefix: bytes | None = None  # the bytes before its moving fields, when those come last


class Refused(NamedTuple):
    reason: str  # "forged" or "not a record"
    detail: str


_FORGED = "forged"
_NOT_A_RECORD = Refused("not a record", "does not validate")


@dataclass(frozen=True)
class _Known:
    steady: dict[str, Any]
    record: Capabilities
    prefix: bytes | None


class RecordDecoder:
    """Bytes → a record, reusing each node's previous record when only its moving fields
    moved.

    Holds one steady part per node taken (`keep`), none for refused ones, and drops it
    with the node (`forget`).
    """

    def __init__(self) -> None:
        self._known: dict[str, _Known] = {}

    def decode(self, node: str, data: bytes) -> Decoded | Refused:
        """A validated record of `node` (the subject's token) from `data`, or why not."""
        known = self._known.get(node)
        if known is not None and known.prefix is not None and data.startswith(known.prefix):
            tail = parse_object(b"{" + data[len(known.prefix) :])
            if tail is not None and tail.keys() <= _IS_MOVING:
                return self._reuse(known, tail)
        raw = parse_object(data)
        if raw is None:
            return _NOT_A_RECORD
        claimed = raw.get("node_id")
        if claimed is not None and claimed != node:
            return Refused(_FORGED, f"body says node_id {claimed!r}")
        steady = {key: value for key, value in raw.items() if key not in _IS_MOVING}
        if known is not None and known.steady == steady:
            return self._reuse(known, raw)
        try:
            record = Capabilities.model_validate(raw)
        except pydantic.ValidationError:
            return _NOT_A_RECORD
        return Decoded(record, steady, reused=False, prefix=_steady_prefix(data, raw, steady))

    @staticmethod
    def _reuse(known: _Known, moving_fields: dict[str, Any]) -> Decoded | Refused:
        try:
            moving = _Moving.model_validate(moving_fields)
        except pydantic.ValidationError:
            return _NOT_A_RECORD
        update = {name: getattr(moving, name) for name in _MOVING}
        record = known.record.model_copy(update=update)
        return Decoded(record, known.steady, reused=True, prefix=known.prefix)

    def keep(self, node: str, decoded: Decoded) -> None:
        """Remember a taken record's steady part, to compare the next one with."""
        if not decoded.reused:
            self._known[node] = _Known(decoded.steady, decoded.record, decoded.prefix)

    def forget(self, node: str) -> None:
        self._known.pop(node, None)


def parse_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object, or None for anything else (never raises)."""
    try:
        raw = pydantic_core.from_json(data)
    except ValueError:
        return None
    return raw if isinstance(raw, dict) else None


def _steady_prefix(data: bytes, raw: dict[str, Any], steady: dict[str, Any]) -> bytes | None:
    """The bytes of `data` up to its first moving field, when every field after it moves
    (each moving key searched from the end, past a nested key of that name in the steady
    part).

    Proved on this record, not assumed: its bytes up to there, closed, parse to exactly
    its steady part, and the rest, opened, to exactly its moving part. A later record
    that starts with the same bytes then parses as this steady part plus its own rest.
    """
    starts = [data.rfind(b',"' + name.encode() + b'":') for name in _MOVING]
    found = [start for start in starts if start >= 0]
    if not found:
        return None
    cut = min(found)
    moving = {key: value for key, value in raw.items() if key in _IS_MOVING}
    if parse_object(data[:cut] + b"}") != steady:
        return None
    if parse_object(b"{" + data[cut + 1 :]) != moving:
        return None
    return data[: cut + 1]
