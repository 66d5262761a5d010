"""``python -m tools.simulator``: the simulator as its own process.

Prints ``simulator listening on http://HOST:PORT`` once it accepts connections, so a
parent process (a benchmark, ``inferbus up``, a chaos test) can wait for that line, and
stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Callable

from tools.simulator.cloud import KeyBehaviour, parse_key_spec
from tools.simulator.llama_server import LlamaServerTraits
from tools.simulator.models import DEFAULT_MODELS, SimModel
from tools.simulator.server import Simulator

# Name suffixes that switch a model's abilities, e.g. "llava:7b:vision", "bge-m3:embed".
_SWITCHES: dict[str, Callable[[SimModel], SimModel]] = {
    ":vision": lambda model: dataclasses.replace(model, vision=True),
    ":embed": lambda model: dataclasses.replace(model, embedding=True, chat=False),
    ":notools": lambda model: dataclasses.replace(model, tools=False),
    ":think": lambda model: dataclasses.replace(model, thinking=True),
}


def parse_models(spec: str) -> list[SimModel]:
    """``"a,b:vision,e:embed,c:notools,t:think"`` → a; b accepting images; e embedding
    only; c refusing tools; t reasoning first when asked to think.

    Raises:
        ValueError: the list is empty or a name is invalid.
    """
    models: list[SimModel] = []
    for item in spec.split(","):
        name = item.strip()
        switches = []
        for suffix, switch in _SWITCHES.items():
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                switches.append(switch)
        if name:
            model = SimModel(name)
            for switch in switches:
                model = switch(model)
            models.append(model)
    if not models:
        raise ValueError(f"no model names in {spec!r}")
    return models


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A fake inference runtime speaking the Ollama and OpenAI APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default 0: any free)")
    parser.add_argument(
        "--models",
        help="comma-separated names; suffix ':vision' (takes images), ':embed' (embeds only), "
        "':notools' (refuses tools), ':think' (reasons first when asked to think) "
        f"(default: {','.join(m.name + (':vision' if m.vision else '') for m in DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--embedding-dimensions",
        type=int,
        metavar="N",
        help="the embedding models' own width (numbers per vector when a request names no "
        "dimensions; default 16)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay before answering, ms (default 0)"
    )
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument(
        "--token-interval-ms",
        type=float,
        default=0.0,
        help="delay between streamed tokens, ms (default 0)",
    )
    parser.add_argument(
        "--llama-server",
        type=int,
        metavar="SLOTS",
        help="play llama.cpp's llama-server with SLOTS slots: exactly one model (a path "
        "name works), /props, /v1/models meta, answers naming its model",
    )
    parser.add_argument("--api-key", help="with --llama-server: the key its --api-key would be")
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


def run_cli(argv: list[str] | None = None, prog: str = "python -m tools.simulator") -> int:
    """Run the simulator until SIGINT/SIGTERM; returns the process exit code."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    try:
        models = None if args.models is None else parse_models(args.models)
        if args.embedding_dimensions is not None:
            models = [
                dataclasses.replace(model, embedding_dimensions=args.embedding_dimensions)
                if model.embedding
                else model
                for model in (DEFAULT_MODELS if models is None else models)
            ]
        if args.api_key is not None and args.llama_server is None:
            raise ValueError("--api-key needs --llama-server")
        traits = None
        if args.llama_server is not None:
            if args.llama_server < 1:
                raise ValueError("--llama-server SLOTS must be at least 1")
            traits = LlamaServerTraits(total_slots=args.llama_server, api_key=args.api_key)
        simulator = Simulator(
            models,
            latency_ms=args.latency_ms,
            tokens=args.tokens,
            token_interval_ms=args.token_interval_ms,
            host=args.host,
            port=args.port,
            llama_server=traits,
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
