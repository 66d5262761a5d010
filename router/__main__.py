"""`python -m router --config router.yml`: run the router until SIGTERM/SIGINT; SIGHUP
re-reads the config file (router/reload.py says what it applies)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from router.config import config_warnings, load_router_settings
from router.service import RouterService, StartupError
from services.lifecycle import stop_on_signals
from services.loop import run
from services.settings import ConfigError
from services.telemetry import configure_logging

log = logging.getLogger("inferbus.router")


async def serve(config: Path | None, port: int | None) -> int:
    try:
        settings = load_router_settings(config)
    except ConfigError as error:
        print(f"inferbus router: {error}", file=sys.stderr)
        return 2
    for warning in config_warnings(settings):
        log.warning("%s", warning)
    if port is not None:
        settings = settings.model_copy(
            update={"http": settings.http.model_copy(update={"port": port})}
        )
    stop = asyncio.Event()
    stop_on_signals(stop, log)
    try:
        service = RouterService(settings, config_path=config)
        reloads: set[asyncio.Task[object]] = set()

        def reload() -> None:  # SIGHUP: re-read the config file, keep serving
            task = asyncio.ensure_future(service.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        # Before HTTP opens: a SIGHUP from then on reloads, it never kills the router.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
        async with service:
            # What start-up built lives as long as the process: the collector's full
            # passes need not walk it again (each took ~60 ms with the router's modules).
            gc.freeze()
            # A request leaves no cyclic garbage, so a young pass only walks the calls in
            # flight: one per 10,000 allocations (not 700) cut the collector's time per
            # request about fourfold under load (ops/bench/RESULTS.md).
            gc.set_threshold(10_000, 10, 10)
            stopped = asyncio.create_task(stop.wait())
            failed = asyncio.create_task(service.fatal.wait())
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            failed.cancel()
            if service.fatal.is_set():
                print(f"inferbus router: {service.fatal_cause}", file=sys.stderr)
                return service.fatal_exit_code
    except StartupError as error:
        print(f"inferbus router: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inferbus router", description=__doc__)
    parser.add_argument("--config", type=Path, help="router YAML file")
    parser.add_argument("--port", type=int, help="HTTP port (overrides http.port)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run(serve(args.config, args.port))


if __name__ == "__main__":
    sys.exit(main())
