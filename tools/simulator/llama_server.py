"""llama.cpp's own `llama-server`, where it differs from a generic OpenAI-compatible server.

Checked against llama.cpp `tools/server/server-context.cpp` (`get_res_model_info`,
`get_res_props`) and `server-http.cpp` (API-key and loading middlewares):
- one model; its id is the alias, else the GGUF's name (older builds: the path given to
  `-m`); a chat answer names that model whatever the request asked for;
- `/v1/models` entries carry `meta` {n_ctx, n_ctx_train, n_params, size, ...};
- `GET /props`: `total_slots` (`-np`), `default_generation_settings.n_ctx`, `model_path`;
- `--api-key`: every path but `/health` and `/v1/health` needs `Authorization: Bearer`,
  else 401 `{"error": {"message": "Invalid API Key", "type": "authentication_error"}}`;
- while the model loads, every path (`/health` too) answers 503 "Loading model";
- at most `total_slots` generations run at once; the others wait their turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tools.simulator.flow import STATE_KEY, json_response
from tools.simulator.models import SimModel

_PUBLIC_PATHS = frozenset({"/health", "/v1/health"})
_CONTROL_PREFIX = "/_sim/"


@dataclass
class LlamaServerTraits:
    """The llama-server behaviours a simulator shows; change them while it runs.

    Args:
        total_slots: `-np`: generations run at once (the rest queue, as in llama-server).
        n_ctx: the context per slot, in `/props` and `/v1/models` `meta.n_ctx`.
        api_key: `--api-key`; None serves everyone.
        loading: answer 503 "Loading model" everywhere, as while the GGUF loads.
    """

    total_slots: int = 1
    n_ctx: int = 4096
    api_key: str | None = None
    loading: bool = False
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.total_slots)
        return self._slots


def _error(status: int, message: str, kind: str) -> web.Response:
    return json_response(status, {"error": {"code": status, "message": message, "type": kind}})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def llama_server_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API-key check, then the loading check, before any route (as llama-server)."""
    traits = request.app[STATE_KEY].llama_server
    if traits is None or request.path.startswith(_CONTROL_PREFIX):
        return await handler(request)
    if traits.api_key is not None and request.path not in _PUBLIC_PATHS:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given != traits.api_key:
            return _error(401, "Invalid API Key", "authentication_error")
    if traits.loading:
        return _error(503, "Loading model", "unavailable_error")
    if request.path == "/v1/chat/completions":
        async with traits.slots():
            return await handler(request)
    return await handler(request)


def model_entry(model: SimModel, traits: LlamaServerTraits, created: int) -> dict[str, Any]:
    """One `/v1/models` entry as llama-server writes it."""
    return {
        "id": model.name,
        "aliases": [],
        "object": "model",
        "created": created,
        "owned_by": "llamacpp",
        "meta": {
            "vocab_type": 2,
            "n_vocab": 32000,
            "n_ctx": traits.n_ctx,
            "n_ctx_train": model.context_window,
            "n_embd": 64,
            "n_params": model.size_bytes // 2,
            "size": model.size_bytes,
        },
    }


def add_llama_server_routes(app: web.Application) -> None:
    """`GET /props`, for a simulator that plays llama-server."""

    async def props(request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        traits = state.llama_server
        assert traits is not None
        model = next(iter(state.models.values()))
        return json_response(
            200,
            {
                "default_generation_settings": {"n_ctx": traits.n_ctx, "params": {}},
                "total_slots": traits.total_slots,
                "model_alias": model.name,
                "model_path": model.name,
                "modalities": {"vision": model.vision, "audio": False},
                "build_info": "inferbus-simulator",
                "is_sleeping": False,
            },
        )

    app.router.add_get("/props", props)
