"""The simulator's live state, shared by its HTTP handlers and its Python API.

One object holds what tests change at runtime (latency, token count, faults) and what they
observe (calls per model, open generation requests), so the Python API and the ``/_sim``
HTTP control endpoints are two views of the same thing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tools.simulator.cloud import KeyTable
from tools.simulator.faults import FaultTable
from tools.simulator.models import SimModel

if TYPE_CHECKING:
    from tools.simulator.llama_server import LlamaServerTraits


class SimState:
    """Configuration, counters and faults of one simulator."""

    def __init__(
        self,
        models: Iterable[SimModel],
        *,
        latency_ms: float = 0.0,
        tokens: int = 16,
        token_interval_ms: float = 0.0,
        llama_server: LlamaServerTraits | None = None,
    ) -> None:
        self.models: dict[str, SimModel] = {}
        self.replace_models(models)
        if llama_server is not None and len(self.models) != 1:
            raise ValueError("a simulated llama-server serves exactly one model")
        self.llama_server = llama_server
        self.latency_ms = 0.0
        self.tokens = 0
        self.token_interval_ms = 0.0
        self.configure(latency_ms=latency_ms, tokens=tokens, token_interval_ms=token_interval_ms)
        self.faults = FaultTable()
        self.keys = KeyTable()  # per-API-key provider behaviour (cloud.py)
        self.calls: Counter[str] = Counter()
        self.open_connections = 0
        self.peak_connections = 0  # the most inference calls open at once
        self.stopping = asyncio.Event()

    def replace_models(self, models: Iterable[SimModel]) -> None:
        """Serve these models from now on (a runtime restarted with other models)."""
        served: dict[str, SimModel] = {}
        for model in models:
            if model.name in served:
                raise ValueError(f"model {model.name!r} is listed twice")
            served[model.name] = model
        self.models.clear()  # in place: the route handlers hold this dict
        self.models.update(served)

    def configure(
        self,
        *,
        latency_ms: float | None = None,
        tokens: int | None = None,
        token_interval_ms: float | None = None,
    ) -> None:
        """Change the generation settings; None leaves a setting as it is.

        Raises:
            ValueError: a setting is negative (checked before anything changes).
        """
        for name, value in (
            ("latency_ms", latency_ms),
            ("tokens", tokens),
            ("token_interval_ms", token_interval_ms),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if latency_ms is not None:
            self.latency_ms = float(latency_ms)
        if tokens is not None:
            self.tokens = int(tokens)
        if token_interval_ms is not None:
            self.token_interval_ms = float(token_interval_ms)

    async def pause(self, seconds: float) -> bool:
        """Sleep, cut short when the simulator stops; returns True if it is stopping.

        Delays end early on stop so that `Simulator.stop()` never waits for a long
        latency, token interval or hang to run out.
        """
        if seconds <= 0:
            return self.stopping.is_set()
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True
