"""``python -m services.simulator``: the simulator as its own process.

Prints ``simulator listening on http://HOST:PORT`` once it accepts connections, so a
parent process (a benchmark, ``inferbus up``, a chaos test) can wait for that line, and
stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

from services.simulator.cloud import KeyBehaviour, parse_key_spec
from services.simulator.models import DEFAULT_MODELS, SimModel
from services.simulator.server import Simulator

_VISION_SUFFIX = ":vision"


def parse_models(spec: str) -> list[SimModel]:
    """``"a,b:vision"`` → models a and b, b accepting images.

    Raises:
        ValueError: the list is empty or a name is invalid.
    """
    models: list[SimModel] = []
    for item in spec.split(","):
        name = item.strip()
        vision = name.endswith(_VISION_SUFFIX)
        if vision:
            name = name.removesuffix(_VISION_SUFFIX)
        if name:
            models.append(SimModel(name, vision=vision))
    if not models:
        raise ValueError(f"no model names in {spec!r}")
    return models


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.simulator",
        description="A fake inference runtime speaking the Ollama and OpenAI APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default 0: any free)")
    parser.add_argument(
        "--models",
        help="comma-separated names, ':vision' suffix for vision models "
        f"(default: {','.join(m.name + (':vision' if m.vision else '') for m in DEFAULT_MODELS)})",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument(
        "--token-interval-ms", type=float, default=0.0, help="delay between streamed tokens"
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY=KIND[:field=value,...]",
        help="play a cloud provider for this API key, e.g. key-a=rate_limited:retry_after_s=30 "
        "(kinds: ok, rate_limited, revoked, no_balance, model_missing, context_exceeded, "
        "max_tokens_ceiling, server_error, hang); repeatable",
    )
    parser.add_argument(
        "--require-keys", action="store_true", help="answer 401 to a key no --key names"
    )
    return parser


async def _serve(simulator: Simulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with simulator:
        print(f"simulator listening on {simulator.url}", flush=True)
        await stop.wait()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: the simulator should never be a benchmark's bottleneck."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_cli(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        models = None if args.models is None else parse_models(args.models)
        simulator = Simulator(
            models,
            latency_ms=args.latency_ms,
            tokens=args.tokens,
            token_interval_ms=args.token_interval_ms,
            host=args.host,
            port=args.port,
        )
        keys: list[tuple[str, KeyBehaviour]] = [parse_key_spec(spec) for spec in args.key]
    except ValueError as exc:
        parser.error(str(exc))
    for key, behaviour in keys:
        simulator.set_key(key, behaviour)
    simulator.require_keys = args.require_keys
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve(simulator))
    except OSError as exc:
        print(f"simulator could not listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
