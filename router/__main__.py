"""`python -m router --config router.yml`: run the router until SIGTERM/SIGINT; SIGHUP
re-reads the config file (router/reload.py says what it applies)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from router.config import config_warnings, load_router_settings
from router.service import RouterService, StartupError
from services.lifecycle import stop_on_signals
from services.loop import run, tune_gc_for_serving
from services.settings import ConfigError
from services.telemetry import configure_logging

log = logging.getLogger("inferbus.router")


_FREEZE_CHECK_S = 30.0


def fleet_outgrew_the_frozen_heap(nodes: int, frozen_with: int) -> bool:
    """The fleet doubled (and is more than a handful of nodes) since the last freeze."""
    return nodes >= max(2 * frozen_with, 64)


async def freeze_as_the_fleet_grows(nodes: Callable[[], int]) -> None:
    """Keep the cycle collector's full passes off what lives as long as the process.

    What is alive once started (modules, the fleet's records from discovery) is frozen;
    a fleet that joins later is frozen each time it has doubled. Without it, every full
    collection walked every record again: ~0.2 s of CPU each at 3,000 nodes, every request
    stalled meanwhile. Cyclic garbage is collected first (a frozen object never is).

    The collector is tuned for serving (services/loop.py): at CPython's default, under
    load a full pass walked whatever was not frozen every ~0.4 s (20-50 ms at 3,000 nodes).
    """
    frozen_with = nodes()
    tune_gc_for_serving()
    gc.freeze()
    while True:
        await asyncio.sleep(_FREEZE_CHECK_S)
        if fleet_outgrew_the_frozen_heap(nodes(), frozen_with):
            frozen_with = nodes()
            gc.collect()
            gc.freeze()


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
            freezer = asyncio.create_task(
                freeze_as_the_fleet_grows(lambda: len(service.fleet.nodes))
            )
            stopped = asyncio.create_task(stop.wait())
            failed = asyncio.create_task(service.fatal.wait())
            try:
                await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stopped, failed, freezer):
                    task.cancel()
                await asyncio.gather(stopped, failed, freezer, return_exceptions=True)
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
