"""`Simulator`: the runtime simulator's lifecycle and its Python control surface.

Tests use it as ``async with Simulator(...) as sim`` on a real loopback socket; the same
object arms faults, changes latency and reports what the runtime saw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from aiohttp import web

from services.lifecycle import AsyncService
from tools.simulator.app import build_app
from tools.simulator.cloud import KeyBehaviour
from tools.simulator.faults import Fault
from tools.simulator.llama_server import LlamaServerTraits
from tools.simulator.models import DEFAULT_MODELS, SimModel
from tools.simulator.state import SimState

# Backstop for stop(): requests still running after this are cancelled. Delays and hangs
# already end at once on stop, so this only bounds a handler stuck in a socket write.
_SHUTDOWN_TIMEOUT_S = 1.0


class Simulator(AsyncService):
    """An Ollama + OpenAI-compatible inference runtime on a real socket.

    Args:
        models: the models served; DEFAULT_MODELS when None.
        latency_ms: delay before a non-stream answer and before a stream's first byte.
        tokens: tokens per answer, before any max_tokens / num_predict cap.
        token_interval_ms: delay between streamed tokens.
        host: interface to listen on.
        port: TCP port; 0 picks a free one (kept across a stop/start restart).
        llama_server: play llama.cpp's `llama-server` (one model, `/props`, API key,
            loading, slots); its traits can be changed while the simulator runs.
    """

    def __init__(
        self,
        models: Iterable[SimModel] | None = None,
        *,
        latency_ms: float = 0.0,
        tokens: int = 16,
        token_interval_ms: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        llama_server: LlamaServerTraits | None = None,
    ) -> None:
        self._state = SimState(
            DEFAULT_MODELS if models is None else models,
            latency_ms=latency_ms,
            tokens=tokens,
            token_interval_ms=token_interval_ms,
            llama_server=llama_server,
        )
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen and serve. A stopped simulator can start again, on the same port."""
        if self._runner is not None:
            raise RuntimeError("simulator is already running")
        self._state.stopping.clear()
        runner = web.AppRunner(
            build_app(self._state),
            handle_signals=False,
            access_log=None,
            # Cancel a handler when its client goes away, as a runtime stops generating.
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = _bound_port(runner)
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and end every open request; safe to call more than once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._state.stopping.set()
        await runner.cleanup()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("simulator has not started; its port is not chosen yet")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def models(self) -> tuple[SimModel, ...]:
        return tuple(self._state.models.values())

    @property
    def llama_server(self) -> LlamaServerTraits | None:
        return self._state.llama_server

    def replace_models(self, models: Iterable[SimModel]) -> None:
        """Serve other models from now on, as a runtime restarted with another model."""
        self._state.replace_models(models)

    @property
    def calls(self) -> dict[str, int]:
        """Generation requests received per model name (a snapshot; missing names are 0)."""
        return Counter(self._state.calls)

    def reset_calls(self) -> None:
        self._state.calls.clear()

    @property
    def open_connections(self) -> int:
        """Generation requests being handled right now."""
        return self._state.open_connections

    @property
    def peak_connections(self) -> int:
        """The most inference calls that were open at once since the start."""
        return self._state.peak_connections

    def set_fault(self, model: str, fault: Fault) -> None:
        """Arm ``fault`` for ``model`` (``"*"``: every model), replacing the previous one."""
        self._state.faults.set(model, fault)

    def clear_faults(self) -> None:
        self._state.faults.clear()

    def set_key(self, key: str, behaviour: KeyBehaviour) -> None:
        """Play a cloud provider for requests carrying ``key`` (tools/simulator/cloud.py)."""
        self._state.keys.set(key, behaviour)

    def clear_keys(self) -> None:
        self._state.keys.clear()

    @property
    def require_keys(self) -> bool:
        """Whether a request with a key nobody armed (or none) gets 401."""
        return self._state.keys.require_keys

    @require_keys.setter
    def require_keys(self, value: bool) -> None:
        self._state.keys.require_keys = value

    @property
    def key_calls(self) -> dict[str, int]:
        """Chat completion requests received per API key (a snapshot)."""
        return Counter(self._state.keys.calls)

    @property
    def latency_ms(self) -> float:
        return self._state.latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float) -> None:
        self._state.configure(latency_ms=value)

    @property
    def tokens(self) -> int:
        return self._state.tokens

    @tokens.setter
    def tokens(self, value: int) -> None:
        self._state.configure(tokens=value)

    @property
    def token_interval_ms(self) -> float:
        return self._state.token_interval_ms

    @token_interval_ms.setter
    def token_interval_ms(self, value: float) -> None:
        self._state.configure(token_interval_ms=value)


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("simulator socket has no TCP port")
