"""``/_sim/keys`` and the per-key gate in front of ``/v1/chat/completions``.

The gate runs before the ordinary generation flow: a request whose key has a behaviour
armed (tools/simulator/cloud.py) is answered the way that provider would refuse it, or
held open (``hang``); any other request goes on as if the simulator had no keys at all.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tools.simulator.cloud import KeyBehaviour, key_of, refusal_for
from tools.simulator.flow import STATE_KEY, drop_connection, json_response, read_json_object
from tools.simulator.state import SimState


async def key_gate(request: web.Request, state: SimState) -> web.StreamResponse | None:
    """The armed refusal for this request's key (after the simulator's latency), or None
    to serve it normally."""
    key = key_of(request)
    behaviour = state.keys.take(key)
    if behaviour is None or behaviour.kind == "ok":
        return None
    payload = read_json_object(await request.read())  # aiohttp keeps the body for the flow
    fields: dict[str, Any] = payload if isinstance(payload, dict) else {}
    if behaviour.kind == "hang":
        state.open_connections += 1
        try:
            await state.stopping.wait()
        finally:
            state.open_connections -= 1
        return drop_connection(request)
    refusal = refusal_for(behaviour, fields, key)
    if refusal is not None and isinstance(fields.get("model"), str):
        state.calls[fields["model"]] += 1
    # A slow provider is slow to refuse too: a burst reaches the key before its first 429.
    if refusal is not None and await state.pause(state.latency_ms / 1000):
        return drop_connection(request)
    return refusal


def add_key_routes(app: web.Application) -> None:
    """Register ``GET/POST/DELETE /_sim/keys`` on ``app``."""
    state = app[STATE_KEY]

    async def get_keys(request: web.Request) -> web.Response:
        return json_response(200, state.keys.snapshot())

    async def set_key(request: web.Request) -> web.Response:
        payload = read_json_object(await request.read())
        try:
            if not isinstance(payload, dict):
                raise ValueError(payload.message)
            require = payload.get("require_keys")
            if require is not None:
                if not isinstance(require, bool):
                    raise ValueError("require_keys must be a boolean")
                state.keys.require_keys = require
            key = payload.get("key")
            if key is not None:
                if not isinstance(key, str) or not key:
                    raise ValueError("key must be a non-empty string")
                state.keys.set(key, KeyBehaviour.from_json(payload))
            elif require is None:
                raise ValueError("key is required (or require_keys alone)")
        except ValueError as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(200, state.keys.snapshot())

    async def clear_keys(request: web.Request) -> web.Response:
        state.keys.clear()
        state.keys.calls.clear()
        return json_response(200, state.keys.snapshot())

    app.router.add_get("/_sim/keys", get_keys)
    app.router.add_post("/_sim/keys", set_key)
    app.router.add_delete("/_sim/keys", clear_keys)
