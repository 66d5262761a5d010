"""The aiohttp application: both runtime APIs and the control API on one port.

One port speaks Ollama and OpenAI at once, so a single simulator can stand in for any
backend kind in the node worker's configuration.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from services.simulator.cloud_api import add_key_routes
from services.simulator.control_api import add_control_routes
from services.simulator.flow import STATE_KEY
from services.simulator.ollama_api import add_ollama_routes
from services.simulator.openai_api import add_openai_routes
from services.simulator.state import SimState

# Base64 images make vision requests large; aiohttp's default cap is 1 MiB.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def build_app(state: SimState) -> web.Application:
    """A fresh application over ``state`` (a restart builds a new one, same state)."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[STATE_KEY] = state
    started = datetime.now(UTC)
    add_ollama_routes(app, started)
    add_openai_routes(app, int(started.timestamp()))
    add_control_routes(app)
    add_key_routes(app)
    return app
