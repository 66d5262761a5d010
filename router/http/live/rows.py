"""What the live page shows of one node and of one answered request: plain rows of JSON.

Pure: a node's row is made from its index entry, the router's own in-flight count and its
breakers, nothing else; a request's row from its route and answer. The page never gets a
prompt, an answer's text, a key or a runtime's credentials: rows name things (node ids,
models, key ids, outcomes) and count them (ms, tokens), and runtime URLs lose their
passwords.

A node row is split in two: the *steady* part (runtimes, models, load, breakers,
staleness), sent when it changes, and the *heard* time, which moves with every heartbeat
and is sent in a small batch of its own (`heard`), so a heartbeat that changes nothing
else costs the page a few bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.attempts.route import Route
from router.fleet.index import NodeEntry
from services.capabilities import Capabilities
from services.runtimes.errors import redact
from services.wire import SLOT_KINDS, JobResponse

__all__ = ["RequestFacts", "heard_at", "node_row", "queue_summary", "request_row"]


def heard_at(entry: NodeEntry, *, now: float, now_unix: float) -> float:
    """When the node's newest record arrived, in unix seconds (the router's receive clock)."""
    return round(now_unix - entry.age_s(now), 1)


def node_row(
    entry: NodeEntry,
    *,
    now: float,
    local: bool,
    router_inflight: Mapping[str, int],
    breakers: Mapping[str, str],
) -> dict[str, Any]:
    """The steady part of one node's row (everything but when it was last heard)."""
    record = entry.record
    return {
        "id": record.node_id,
        "local": local,
        "stale": entry.stale(now),
        "ttl_s": record.ttl_s,
        "version": record.version,
        "runtimes": _runtimes(record),
        "models": [
            {
                "name": model.name,
                "type": model.type,
                "runtime": model.runtime,
                "running": bool(model.running),
            }
            for model in record.served_models
        ],
        "load": _load(record, router_inflight),
        "breakers": dict(sorted(breakers.items())),
        "gpus": [
            {
                "name": gpu.name,
                "mem_used_mb": gpu.memory_used_mb,
                "mem_total_mb": gpu.memory_total_mb,
                "util_pct": gpu.utilization_pct,
            }
            for gpu in (record.hardware.gpus if record.hardware else ())
        ],
    }


def _runtimes(record: Capabilities) -> list[dict[str, Any]]:
    return [
        {
            "kind": runtime.kind,
            "url": redact(runtime.url),
            "state": runtime.state,
            "latency_ms": runtime.latency_ms,
            "models": runtime.models,
            "error": redact(runtime.last_error) if runtime.last_error else None,
        }
        for runtime in record.runtimes
    ]


def _load(record: Capabilities, router_inflight: Mapping[str, int]) -> dict[str, list[int]]:
    """Slot kind → [in flight, capacity]: the larger of the node's count and the router's."""
    load: dict[str, list[int]] = {}
    for kind in SLOT_KINDS:
        reported = record.load.get(kind)
        own = router_inflight.get(kind, 0)
        if reported is None and not own:
            continue
        inflight = max(reported.inflight if reported else 0, own)
        load[kind] = [inflight, reported.capacity if reported else 0]
    return load


@dataclass(frozen=True)
class RequestFacts:
    """What the edge knows of one answered request besides its route and answer."""

    api: str  # the dialect: "infer", "openai.chat", ...
    at_unix: float  # when it was answered
    seconds: float  # request to answer
    stream: bool = False
    ttft_s: float | None = None  # streams: request to first piece
    queue_ms: float | None = None  # time waiting in the router's admission queue
    model: str | None = None  # what the caller asked for


def request_row(facts: RequestFacts, response: JobResponse | None, route: Route) -> dict[str, Any]:
    """One recent request: where it went and how it ended; never its content."""
    error = response.error if response is not None else None
    usage = response.result.usage if response is not None and response.result else None
    return {
        "at": round(facts.at_unix, 3),
        "api": facts.api,
        "asked": facts.model,
        "model": route.model,
        "via": route.via,
        "node": route.node,
        "provider": route.provider,
        "status": error.code.value if error is not None else "ok",
        "ms": round(facts.seconds * 1000.0, 1),
        "stream": facts.stream,
        "ttft_ms": round(facts.ttft_s * 1000.0, 1) if facts.ttft_s is not None else None,
        "queue_ms": facts.queue_ms,
        "tokens": [usage.prompt_tokens, usage.completion_tokens] if usage else None,
        "cached": bool(response.cached) if response is not None else False,
        "fallback_reason": route.fallback_reason or None,
        "attempts": [
            {
                "via": attempt.via,
                "where": attempt.node or attempt.provider or attempt.via,
                "key_id": attempt.key_id,
                "model": attempt.model,
                "outcome": attempt.outcome,
                "ms": round(attempt.ms, 1),
            }
            for attempt in route.attempts
        ],
    }


def queue_summary(waiting: list[dict[str, Any]]) -> dict[str, Any]:
    """The admission line as the page shows it: its depth per (tenant, class), with the
    oldest wait of each, from the line's list of waiting calls (no content in either)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for call in waiting:
        key = (str(call.get("tenant", "?")), str(call.get("class", "?")))
        groups.setdefault(key, []).append(float(call.get("age_ms", 0.0)))
    return {
        "total": len(waiting),
        "by": [
            {"tenant": tenant, "class": klass, "waiting": len(ages), "oldest_ms": max(ages)}
            for (tenant, klass), ages in sorted(groups.items())
        ],
    }
