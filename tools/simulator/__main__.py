"""Entry point: ``python -m tools.simulator --port N [--models a,b:vision] ...``."""

from tools.simulator.cli import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli())
