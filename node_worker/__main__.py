"""`python -m node_worker --config worker.toml`: run one node worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from node_worker.config import load_worker_settings
from node_worker.worker import Worker
from services.bus import BusAuthRefused
from services.keystore import StoreUnavailable
from services.lifecycle import stop_on_signals
from services.loop import run, tune_gc_for_serving
from services.settings import ConfigError
from services.telemetry import configure_logging

log = logging.getLogger("inferbus.worker")


async def serve(config: Path | None) -> int:
    try:
        settings = load_worker_settings(config)
    except ConfigError as error:
        print(f"inferbus worker: {error}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    stop_on_signals(stop, log)
    try:
        async with Worker(settings, stop=stop):
            tune_gc_for_serving()
            await stop.wait()
    except BusAuthRefused as error:
        # A wrong password never gets better by retrying: exit 2, which the systemd units
        # treat as "do not restart".
        print(f"inferbus worker: NATS refused the credentials: {error}", file=sys.stderr)
        return 2
    except StoreUnavailable as error:
        # The shared idempotency store is configured but cannot work here: JetStream off,
        # a grant missing. A restart cannot help either.
        print(f"inferbus worker: idempotency store: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inferbus worker", description=__doc__)
    parser.add_argument("--config", type=Path, help="worker TOML file")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run(serve(args.config))


if __name__ == "__main__":
    sys.exit(main())
