"""Entry point: ``python -m services.simulator --port N [--models a,b:vision] ...``."""

from services.simulator.cli import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli())
