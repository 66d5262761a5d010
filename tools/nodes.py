"""`inferbus nodes`: ask the fleet who is there and print what each node serves now.

A scatter-gather on `ncs.discover` (DESIGN §2): every worker answers with its
capabilities record, so what is printed is what the nodes say this second, not a
router's cached view. Exit status lets scripts tell the cases apart: 0 when at least
one node answered, 1 when none did, 2 when NATS cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence

import nats

from services.bus import BusUnreachable, connect_once, describe
from services.capabilities import (
    Capabilities,
    Gpu,
    Load,
    RuntimeStatus,
    ServedModel,
)
from services.fleet_scan import collect_fleet
from services.subjects import Subjects, validate_prefix

EXIT_OK = 0
EXIT_NO_NODES = 1
EXIT_UNREACHABLE = 2

_LOAD_ORDER = ("llm", "vision", "code", "embed")
_INDENT = "    "


# --- rendering (pure) --------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """`3s`, `2m05s`, `1h02m`, `3d04h`: short enough for a column, exact enough to act on."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _seen(record: Capabilities, now_unix: float) -> str:
    age = now_unix - record.ts
    if age < -1:  # the node's clock runs ahead of ours
        return f"clock {format_age(-age)} ahead"
    seen = f"seen {format_age(max(age, 0.0))} ago"
    if age > record.ttl_s:
        return f"{seen} STALE (ttl {format_age(record.ttl_s)})"
    return seen


def _load(load: dict[str, Load]) -> str:
    if not load:
        return "load ?"
    order = sorted(load, key=lambda kind: (_load_rank(kind), kind))
    parts = []
    for kind in order:
        part = f"{kind} {load[kind].inflight}/{load[kind].capacity}"
        parts.append(f"{part} FULL" if load[kind].saturated else part)
    return "  ".join(parts)


def _load_rank(kind: str) -> int:
    return _LOAD_ORDER.index(kind) if kind in _LOAD_ORDER else len(_LOAD_ORDER)


def _latency(latency_ms: float | None) -> str:
    if latency_ms is None:
        return "-"
    return f"{latency_ms:.1f}ms" if latency_ms < 1 else f"{latency_ms:.0f}ms"


def _runtime_row(runtime: RuntimeStatus) -> list[str]:
    models = f"{runtime.models} model" + ("" if runtime.models == 1 else "s")
    return [
        f"{runtime.kind}@{runtime.url}",
        runtime.state,
        _latency(runtime.latency_ms),
        models,
        runtime.last_error or "",
    ]


def _model_row(model: ServedModel) -> list[str]:
    return [
        model.name,
        model.type,
        model.runtime,
        "running" if model.running else "",
        f"{model.size_gb:.1f} GB" if model.size_gb is not None else "",
        f"ctx {model.context_window}" if model.context_window is not None else "",
    ]


def _gpu_row(index: int, gpu: Gpu) -> list[str]:
    def known(value: int | None) -> str:
        return "?" if value is None else str(value)

    memory = f"{known(gpu.memory_used_mb)}/{known(gpu.memory_total_mb)} MiB"
    utilization = f"{known(gpu.utilization_pct)}% busy"
    return [f"gpu{index}", gpu.name, memory, utilization]


def _aligned(groups: Sequence[Sequence[Sequence[str]]]) -> list[list[str]]:
    """Each group's rows as lines, every column padded to its widest cell in all groups,
    so the same column lines up from one node's block to the next."""
    rows = [row for group in groups for row in group]
    if not rows:
        return [[] for _ in groups]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in g
        ]
        for g in groups
    ]


def _section(title: str, lines: list[str], empty: str) -> list[str]:
    return [f"  {title}", *(f"{_INDENT}{line}" for line in lines or [empty])]


def _version(version: str) -> str:
    return version if version.startswith("v") else f"v{version}"


def render_table(
    records: Iterable[Capabilities], *, now_unix: float, discover_subject: str = "ncs.discover"
) -> str:
    """The fleet as text for a terminal: one block per node (header, runtimes, models,
    GPUs when known), each column aligned across all blocks.

    Pure: `now_unix` is the clock, used only for each node's age (now - ts).
    """
    records = list(records)
    if not records:
        return f"no nodes answered on {discover_subject}"
    headers = _aligned(
        [
            [[r.node_id, _seen(r, now_unix), _load(r.load), f"{_version(r.version)} seq {r.seq}"]]
            for r in records
        ]
    )
    runtimes = _aligned([[_runtime_row(rt) for rt in r.runtimes] for r in records])
    models = _aligned([[_model_row(m) for m in r.served_models] for r in records])
    gpus = _aligned(
        [
            [_gpu_row(i, g) for i, g in enumerate(r.hardware.gpus if r.hardware else ())]
            for r in records
        ]
    )
    blocks = []
    for index in range(len(records)):
        lines = [*headers[index], *_section("runtimes", runtimes[index], "none reported")]
        lines += _section("models", models[index], "none served")
        if gpus[index]:
            lines += _section("gpus", gpus[index], "")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_json(records: Iterable[Capabilities]) -> str:
    return json.dumps([record.model_dump(mode="json") for record in records], indent=2)


# --- the command (edge) ------------------------------------------------------------------


def prefix_arg(value: str) -> str:
    """argparse type for `--prefix`: a bad prefix is a usage error, not a traceback."""
    try:
        return validate_prefix(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def seconds_arg(value: str) -> float:
    """argparse type for `--wait`: a positive number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"wait must be more than 0 s, got {value}")
    return seconds


async def show_nodes(*, nats_url: str, prefix: str, wait_s: float, as_json: bool) -> int:
    """Print the fleet; the exit status says whether anyone answered (module docstring)."""
    subjects = Subjects(prefix)
    try:
        nc = await connect_once(nats_url)
    except BusUnreachable as error:
        print(error, file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        records = await collect_fleet(nc, subjects, wait_s=wait_s)
    except (OSError, TimeoutError, nats.errors.Error) as error:
        print(f"lost NATS at {nats_url}: {describe(error)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        await nc.close()
    if as_json:
        print(render_json(records))
    else:
        table = render_table(records, now_unix=time.time(), discover_subject=subjects.discover())
        print(table)
    return EXIT_OK if records else EXIT_NO_NODES
