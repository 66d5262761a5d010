"""Deadline arithmetic (DESIGN §3): budgets travel as remaining milliseconds.

A receiver's deadline is its own receive time plus `timeout_ms`, so clock skew between
nodes cannot matter; `deadline_unix_ms`, when a caller sends it, can only shorten that.
Pure functions, clocks passed in.
"""

from __future__ import annotations


def remaining_budget_ms(
    *,
    timeout_ms: int | None,
    deadline_unix_ms: int | None,
    default_timeout_ms: int,
    now_unix_ms: float,
) -> float:
    """The budget left for a job on arrival; 0 or less means it has already expired."""
    budget = float(default_timeout_ms if timeout_ms is None else timeout_ms)
    if deadline_unix_ms is not None:
        budget = min(budget, deadline_unix_ms - now_unix_ms)
    return budget


def left_ms(deadline_monotonic_s: float, now_monotonic_s: float) -> float:
    """Milliseconds left until a monotonic deadline (negative once passed)."""
    return (deadline_monotonic_s - now_monotonic_s) * 1000.0
