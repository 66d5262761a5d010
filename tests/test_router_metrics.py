"""Router metrics follow the fleet: a forgotten node leaves no series behind."""

from __future__ import annotations

from prometheus_client import generate_latest

from router.attempts.route import Attempt, Route
from router.metrics import RouterMetrics


def test_a_forgotten_nodes_attempt_series_are_dropped() -> None:
    metrics = RouterMetrics(lambda: {})
    for node, outcome in [("gone", "ok"), ("gone", "BUSY"), ("stays", "ok")]:
        route = Route(
            via="remote",
            attempts=[Attempt(via="remote", node=node, model="m", outcome=outcome, ms=1.0)],
        )
        metrics.answered("infer", route, "ok", 0.01)
    metrics.forget("gone")
    metrics.forget("never-seen")
    text = generate_latest(metrics.registry).decode()
    assert 'node="gone"' not in text
    assert 'inferbus_router_attempts_total{node="stays",outcome="ok"} 1.0' in text
