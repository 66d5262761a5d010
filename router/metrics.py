"""The router's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from router.route import Route

_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _BreakerStates(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, dict[str, str]]]) -> None:
        self._snapshot = snapshot

    def collect(self):  # type: ignore[no-untyped-def]
        family = GaugeMetricFamily(
            "inferbus_router_breaker_state",
            "Circuit breaker per node and slot kind: 0 closed, 1 half-open, 2 open.",
            labels=["node", "kind"],
        )
        for node, kinds in self._snapshot().items():
            for kind, status in kinds.items():
                family.add_metric([node, kind], _BREAKER_VALUES.get(status, 0))
        yield family


class RouterMetrics:
    def __init__(self, breaker_snapshot: Callable[[], dict[str, dict[str, str]]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inferbus_router_requests",
            "Requests answered, by API, how they were served and outcome.",
            ["api", "via", "status"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "inferbus_router_attempts",
            "Tries to serve a request, by node (or local/static) and outcome.",
            ["node", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inferbus_router_request_seconds",
            "Time from request to answer.",
            ["api", "via"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_BreakerStates(breaker_snapshot))

    def answered(self, api: str, route: Route, status: str, seconds: float) -> None:
        self.requests.labels(api, route.via, status).inc()
        self.latency.labels(api, route.via).observe(seconds)
        for attempt in route.attempts:
            self.attempts.labels(attempt.node or attempt.via, attempt.outcome).inc()
