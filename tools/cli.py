"""The `inferbus` command: one entry point for every process and tool of the project.

`inferbus worker` and `inferbus router` run those processes' own `main` in this process
(tools may depend on them; `services` may not). `inferbus up` starts each as a process of
its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.loop import run


def count_arg(value: str) -> int:
    """argparse type for `--workers`: a whole number, at least 1."""
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1 worker, got {count}")
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferbus", description="One inference fabric over NATS.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "up",
        help="embedded NATS, a worker (the simulator if no runtime answers) and the router",
        description="Start the whole system on this machine: an embedded nats-server, one "
        "node worker in front of the local runtimes it finds (the built-in simulator when "
        "none answers), extra simulated workers with --workers, and the router's HTTP API "
        "on --http-port. Prints each process's PID and jobs to paste; Ctrl-C stops all.",
    )
    up.add_argument(
        "--nats-port",
        type=int,
        default=4222,
        help="the embedded nats-server's port; a server already there is reused (default 4222)",
    )
    up.add_argument(
        "--http-port", type=int, default=8090, help="the router's HTTP port (default 8090)"
    )
    up.add_argument(
        "--workers",
        type=count_arg,
        default=1,
        help="node workers to start, at least 1 (default 1); the first serves the local "
        "runtimes, the others (NODE_ID-2, NODE_ID-3...) a simulator each: the failover demo",
    )
    up.add_argument(
        "--node-id",
        default="local",
        help="the first worker's node id, also the router's local node (default local)",
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where configs, nats.conf and JetStream data go "
        "(default .inferbus/, or ~/.cache/inferbus when the directory is not writable)",
    )

    commands.add_parser("worker", help="run a node worker (python -m node_worker)", add_help=False)
    commands.add_parser("router", help="run the router (python -m router)", add_help=False)
    commands.add_parser("simulate", help="run the runtime simulator", add_help=False)

    req = commands.add_parser("req", help="send one job and print the reply")
    req.add_argument("target", help="a node id (gpu-a) or a full subject")
    req.add_argument("job", help="JSON job, or plain text used as the prompt")
    req.add_argument(
        "--type",
        choices=["llm", "vision", "code", "embed"],
        default="llm",
        help="the job's type, which picks the node's subject (default llm)",
    )
    req.add_argument(
        "--server",
        default=os.environ.get("INFERBUS_NATS_URL", "nats://127.0.0.1:4222"),
        help="the NATS URL (default $INFERBUS_NATS_URL, else nats://127.0.0.1:4222)",
    )
    req.add_argument("--prefix", default="", help="subject prefix of the fleet")
    req.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    req.add_argument("--raw", action="store_true", help="print the JSON reply")
    req.add_argument("--stream", action="store_true", help="print tokens as they come")

    from tools.nodes import prefix_arg, seconds_arg

    nodes = commands.add_parser(
        "nodes",
        help="ask every node what it serves now",
        description="Ask every node on the bus (ncs.discover) what it serves now and print "
        "a table: exit 0 when a node answered, 1 when none did, 2 when NATS is unreachable.",
    )
    nodes.add_argument(
        "--server",
        default=os.environ.get("INFERBUS_NATS_URL", "nats://127.0.0.1:4222"),
        help="the NATS URL (default $INFERBUS_NATS_URL, else nats://127.0.0.1:4222); "
        "credentials from INFERBUS_NATS__USER, __PASSWORD, __CREDS_FILE...",
    )
    nodes.add_argument(
        "--prefix", type=prefix_arg, default="", help="subject prefix of the fleet (default none)"
    )
    nodes.add_argument("--json", action="store_true", help="print the records as a JSON list")
    nodes.add_argument(
        "--wait",
        type=seconds_arg,
        default=1.0,
        help="seconds to wait for answers at most (default 1)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        from node_worker.__main__ import main as worker_main

        return worker_main(argv[1:])
    if argv and argv[0] == "router":
        from router.__main__ import main as router_main

        return router_main(argv[1:])
    if argv and argv[0] == "simulate":
        from tools.simulator.cli import run_cli

        return run_cli(argv[1:], prog="inferbus simulate")
    args = _parser().parse_args(argv)
    if args.command == "up":
        from tools.terminal import ctrl_c_to_this_process
        from tools.up import UpOptions, default_data_dir, up

        options = UpOptions(
            nats_port=args.nats_port,
            http_port=args.http_port,
            workers=args.workers,
            node_id=args.node_id,
            data_dir=args.data_dir or default_data_dir(),
        )
        with ctrl_c_to_this_process():
            return run(up(options))
    if args.command == "nodes":
        from tools.nodes import show_nodes

        return run(
            show_nodes(
                nats_url=args.server, prefix=args.prefix, wait_s=args.wait, as_json=args.json
            )
        )
    from services.subjects import Subjects
    from tools.req import job_payload, job_subject, send

    subject = job_subject(args.target, args.type, Subjects(args.prefix))
    return run(
        send(
            nats_url=args.server,
            subject=subject,
            payload=job_payload(args.job, args.type),
            timeout_s=args.timeout,
            raw=args.raw,
            stream=args.stream,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
