"""The aiohttp application: both runtime APIs and the control API on one port.

One port speaks Ollama and OpenAI at once, so a single simulator can stand in for any
backend kind in the node worker's configuration.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from tools.simulator.cloud_api import add_key_routes
from tools.simulator.completions_api import add_completions_routes
from tools.simulator.control_api import add_control_routes
from tools.simulator.embed_api import add_embed_routes
from tools.simulator.flow import STATE_KEY
from tools.simulator.llama_server import add_llama_server_routes, llama_server_gate
from tools.simulator.ollama_api import add_ollama_routes
from tools.simulator.openai_api import add_openai_routes
from tools.simulator.state import SimState

# Base64 images make vision requests large; aiohttp's default cap is 1 MiB.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def build_app(state: SimState) -> web.Application:
    """A fresh application over ``state`` (a restart builds a new one, same state)."""
    middlewares = [llama_server_gate] if state.llama_server is not None else []
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=middlewares)
    app[STATE_KEY] = state
    started = datetime.now(UTC)
    add_ollama_routes(app, started)
    add_openai_routes(app, int(started.timestamp()))
    if state.llama_server is not None:
        add_llama_server_routes(app)
    add_embed_routes(app)
    add_completions_routes(app)
    add_control_routes(app)
    add_key_routes(app)
    return app
