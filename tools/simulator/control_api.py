"""``/_sim/*``: the Python control API over HTTP, for a simulator in another process.

Benchmarks and chaos tests start the simulator with ``python -m tools.simulator`` and
still need to arm faults, change latency and read call counts; these endpoints are the
same operations as `Simulator.set_fault`, `Simulator.latency_ms` and `Simulator.calls`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tools.simulator.faults import Fault
from tools.simulator.flow import STATE_KEY, json_response, read_json_object
from tools.simulator.plan import Rejection
from tools.simulator.state import SimState


def _config(state: SimState) -> dict[str, Any]:
    return {
        "latency_ms": state.latency_ms,
        "tokens": state.tokens,
        "token_interval_ms": state.token_interval_ms,
    }


def _int_field(payload: dict[str, Any], name: str, default: int | None) -> int | None:
    value = payload.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    return int(value)


def _number_field(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    return float(value)


def fault_from_json(payload: dict[str, Any]) -> tuple[str, Fault]:
    """The (model, fault) a ``POST /_sim/faults`` body asks for.

    Raises:
        ValueError: a field is missing or invalid; the message names it.
    """
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError('model is required (a model name, or "*" for every model)')
    kind = payload.get("kind")
    if not isinstance(kind, str):
        raise ValueError("kind is required")
    fault = Fault(
        kind=kind,
        count=_int_field(payload, "count", None),
        delay_ms=_int_field(payload, "delay_ms", 0) or 0,
        after_chunks=_int_field(payload, "after_chunks", 0) or 0,
    )
    return model, fault


async def _body(request: web.Request) -> dict[str, Any]:
    payload = read_json_object(await request.read())
    if isinstance(payload, Rejection):
        raise ValueError(payload.message)
    return payload


def add_control_routes(app: web.Application) -> None:
    """Register ``/_sim/calls``, ``/_sim/faults`` and ``/_sim/config`` on ``app``."""
    state = app[STATE_KEY]

    async def get_calls(request: web.Request) -> web.Response:
        return json_response(
            200, {"calls": dict(state.calls), "open_connections": state.open_connections}
        )

    async def reset_calls(request: web.Request) -> web.Response:
        state.calls.clear()
        return json_response(200, {"calls": {}, "open_connections": state.open_connections})

    async def get_faults(request: web.Request) -> web.Response:
        return json_response(200, {"faults": state.faults.snapshot()})

    async def set_fault(request: web.Request) -> web.Response:
        try:
            model, fault = fault_from_json(await _body(request))
        except ValueError as exc:
            return json_response(400, {"error": str(exc)})
        state.faults.set(model, fault)
        return json_response(200, {"faults": state.faults.snapshot()})

    async def clear_faults(request: web.Request) -> web.Response:
        state.faults.clear()
        return json_response(200, {"faults": {}})

    async def get_config(request: web.Request) -> web.Response:
        return json_response(200, _config(state))

    async def set_config(request: web.Request) -> web.Response:
        try:
            payload = await _body(request)
            state.configure(
                latency_ms=_number_field(payload, "latency_ms"),
                tokens=_int_field(payload, "tokens", None),
                token_interval_ms=_number_field(payload, "token_interval_ms"),
            )
        except ValueError as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(200, _config(state))

    app.router.add_get("/_sim/calls", get_calls)
    app.router.add_delete("/_sim/calls", reset_calls)
    app.router.add_get("/_sim/faults", get_faults)
    app.router.add_post("/_sim/faults", set_fault)
    app.router.add_delete("/_sim/faults", clear_faults)
    app.router.add_get("/_sim/config", get_config)
    app.router.add_post("/_sim/config", set_config)
