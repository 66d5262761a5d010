"""The router's Prometheus metrics, on a registry of its own."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router.attempts.route import Route
from services.token_times import TokenTimes
from services.wire import JobResponse

_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_MODEL_STATE_VALUES = {"healthy": 0, "rechecking": 1, "cooling": 2, "disabled": 3}
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_CHILDREN_LIMIT = 10_000  # label sets remembered before the memo starts over

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)


class _BreakerStates(Collector):
    def __init__(self, snapshot: Callable[[], Mapping[str, Mapping[str, str]]]) -> None:
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


class _CloudProviders(Collector):
    """The `/providers` document as metrics: cooldowns, model health, usage per key."""

    def __init__(self, view: Callable[[], dict[str, Any]]) -> None:
        self._view = view

    def collect(self):  # type: ignore[no-untyped-def]
        cooldown = GaugeMetricFamily(
            "inferbus_router_cloud_key_cooldown_seconds",
            "Seconds until a (provider, key id) pair may be called again; 0 when usable.",
            labels=["provider", "key_id"],
        )
        model_state = GaugeMetricFamily(
            "inferbus_router_cloud_model_state",
            "Cloud model health: 0 healthy, 1 rechecking, 2 cooling, 3 disabled.",
            labels=["provider", "model"],
        )
        key_model = ["provider", "key_id", "model"]
        invocations = CounterMetricFamily(
            "inferbus_router_cloud_invocations",
            "Calls per (provider, key, model).",
            labels=key_model,
        )
        failures = CounterMetricFamily(
            "inferbus_router_cloud_failures",
            "Failed calls per (provider, key, model).",
            labels=key_model,
        )
        tokens = CounterMetricFamily(
            "inferbus_router_cloud_tokens",
            "Tokens per (provider, key, model), prompt and completion.",
            labels=[*key_model, "kind"],
        )
        cost = CounterMetricFamily(
            "inferbus_router_cloud_cost",
            "Cost per (provider, key, model), as priced.",
            labels=key_model,
        )
        for provider in self._view()["providers"]:
            name = provider["provider"]
            for key in provider["keys"]:
                cooldown.add_metric([name, key["key_id"]], key["cooldown_left_s"])
            for model in provider["models"]:
                model_state.add_metric(
                    [name, model["model"]], _MODEL_STATE_VALUES.get(model["state"], 0)
                )
            for row in provider["usage"]:
                labels = [name, row["key_id"], row["model"]]
                invocations.add_metric(labels, row["invocations"])
                failures.add_metric(labels, row["failures"])
                tokens.add_metric([*labels, "prompt"], row["tokens"]["prompt"])
                tokens.add_metric([*labels, "completion"], row["tokens"]["completion"])
                cost.add_metric(labels, row["cost"])
        yield from (cooldown, model_state, invocations, failures, tokens, cost)


class RouterMetrics:
    def __init__(
        self,
        breaker_snapshot: Callable[[], Mapping[str, Mapping[str, str]]],
        providers_view: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inferbus_router_requests",
            "Requests answered, by API, how they were served and outcome.",
            ["api", "via", "status"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "inferbus_router_attempts",
            "Tries to serve a request, by node (or cloud provider, local, static) and outcome.",
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
        by_where = ["model", "node"]
        self.served_seconds = Histogram(
            "inferbus_router_served_seconds",
            "Answered requests: request to answer, by the model and node that served it.",
            by_where,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "inferbus_router_ttft_seconds",
            "Streams: request to the first token relayed, by model and node.",
            by_where,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "inferbus_router_inter_token_seconds",
            "Streams: the gap between two tokens relayed, by model and node.",
            by_where,
            buckets=INTER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.served_tokens = Counter(
            "inferbus_router_tokens",
            "Tokens of answered requests (prompt, completion), by model and node.",
            [*by_where, "kind"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "inferbus_router_queue_depth",
            "Calls waiting in the router's line for a slot, by tenant and class.",
            ["tenant", "class"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "inferbus_router_queue_wait_seconds",
            "Time a call waited in the router's line, by tenant and class.",
            ["tenant", "class"],
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            "inferbus_router_rejections",
            "Calls turned away with 429, by reason: rpm, tpm, max_queued, queue, max_wait.",
            ["reason"],
            registry=self.registry,
        )
        self.tenant_tokens = Counter(
            "inferbus_router_tenant_tokens",
            "Tokens used per tenant (prompt and completion), from the answers' usage.",
            ["tenant", "kind"],
            registry=self.registry,
        )
        # (metric, label values) -> its child: prometheus_client's `labels` takes a lock
        # and builds a key per call, several times per request.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._outcomes_of: dict[str, set[str]] = {}  # node -> outcomes it has series for
        self._models_of: dict[str, set[str]] = {}  # node -> models it has served series for
        self.registry.register(_BreakerStates(breaker_snapshot))
        if providers_view is not None:
            self.registry.register(_CloudProviders(providers_view))

    def _child(self, metric: _Metric, *values: str) -> _Metric:
        """`metric.labels(*values)`, looked up once per label set."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= _CHILDREN_LIMIT:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child

    def answered(self, api: str, route: Route, status: str, seconds: float) -> None:
        self._child(self.requests, api, route.via, status).inc()
        self._child(self.latency, api, route.via).observe(seconds)
        for attempt in route.attempts:
            where = attempt.node or attempt.provider or attempt.via
            self._child(self.attempts, where, attempt.outcome).inc()
            if attempt.node:
                self._outcomes_of.setdefault(attempt.node, set()).add(attempt.outcome)

    def served(
        self,
        route: Route,
        response: JobResponse,
        seconds: float,
        pieces: TokenTimes | None,
    ) -> None:
        """An answered request's speed and tokens, by the model and node that served it.

        Failures are left out (their model and node may be anything a caller typed), so
        the labels are what the fleet serves, and a forgotten node's go with it."""
        if response.status != "ok" or route.model is None:
            return
        node = route.node or route.provider or route.via
        model = route.model
        self._child(self.served_seconds, model, node).observe(seconds)
        if route.node:
            self._models_of.setdefault(route.node, set()).add(model)
        if pieces is not None and pieces.first_s is not None:
            self._child(self.ttft, model, node).observe(pieces.first_s)
            gaps = self._child(self.inter_token, model, node)
            for gap in pieces.gaps_s:
                gaps.observe(gap)
        usage = response.result.usage if response.result is not None else None
        if usage is not None:
            self._child(self.served_tokens, model, node, "prompt").inc(usage.prompt_tokens)
            self._child(self.served_tokens, model, node, "completion").inc(usage.completion_tokens)

    def forget(self, node: str) -> None:
        """The fleet forgot the node: its series go too (state follows the fleet)."""
        self._children.clear()  # no child of a removed series may be counted on
        for outcome in self._outcomes_of.pop(node, ()):
            self.attempts.remove(node, outcome)
        for model in self._models_of.pop(node, ()):
            for series in (self.served_seconds, self.ttft, self.inter_token):
                with contextlib.suppress(KeyError):
                    series.remove(model, node)
            for kind in ("prompt", "completion"):
                with contextlib.suppress(KeyError):
                    self.served_tokens.remove(model, node, kind)

    # The admission line's events (router/admission/line.py `QueueMetrics`).

    def depth(self, tenant: str, priority: str, change: int) -> None:
        self._child(self.queue_depth, tenant, priority).inc(change)

    def waited(self, tenant: str, priority: str, seconds: float) -> None:
        self._child(self.queue_wait, tenant, priority).observe(seconds)

    def rejected(self, reason: str) -> None:
        self._child(self.rejections, reason).inc()

    def tokens(self, tenant: str, prompt: int, completion: int) -> None:
        self._child(self.tenant_tokens, tenant, "prompt").inc(prompt)
        self._child(self.tenant_tokens, tenant, "completion").inc(completion)
