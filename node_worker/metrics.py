"""The worker's Prometheus metrics, on a registry of its own (several workers may share a
process in tests and in `inferbus up --workers N`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from services.token_times import TokenTimes
from services.wire import JobResponse, Usage

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class WorkerMetrics:
    """Every job passes here several times: a metric's child for a set of labels is
    looked up once and kept (`labels()` validates and locks on every call)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.jobs = Counter(
            "inferbus_worker_jobs",
            "Jobs answered, by type, model and outcome (ok or an error code).",
            ["type", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inferbus_worker_job_seconds",
            "Time from a job's arrival to its answer.",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "inferbus_worker_inflight",
            "Jobs holding a slot now, by slot kind.",
            ["kind"],
            registry=self.registry,
        )
        by_runtime = ["model", "runtime"]
        self.runtime_seconds = Histogram(
            "inferbus_worker_runtime_call_seconds",
            "A job's whole runtime call, by model and runtime kind.",
            by_runtime,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "inferbus_worker_ttft_seconds",
            "Streams: from the runtime call's start to its first token.",
            by_runtime,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "inferbus_worker_inter_token_seconds",
            "Streams: the gap between two tokens from the runtime.",
            by_runtime,
            buckets=INTER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "inferbus_worker_tokens",
            "Tokens the runtimes took (prompt) and produced (completion).",
            [*by_runtime, "kind"],
            registry=self.registry,
        )
        self.idempotency_hits = Counter(
            "inferbus_worker_idempotency_hits",
            "Jobs answered from an earlier job with the same key (running or completed).",
            ["state"],
            registry=self.registry,
        )

    def job_finished(
        self, job_type: str, model: str | None, response: JobResponse, seconds: float
    ) -> None:
        status = response.error.code.value if response.error else response.status
        self._child(self.jobs, job_type, model or "", status).inc()
        if seconds > 0:
            self._child(self.latency, job_type).observe(seconds)

    def runtime_call(
        self,
        model: str,
        runtime: str,
        *,
        seconds: float,
        times: TokenTimes,
        usage: Usage | None,
        ok: bool,
    ) -> None:
        """One runtime call ended: its duration, token times and tokens (a failed one's
        duration only: its tokens and times say nothing about the model's speed)."""
        if not model:
            return
        self._child(self.runtime_seconds, model, runtime).observe(seconds)
        if not ok:
            return
        if times.first_s is not None:
            self._child(self.ttft, model, runtime).observe(times.first_s)
            gaps = self._child(self.inter_token, model, runtime)
            for gap in times.gaps_s:
                gaps.observe(gap)
        if usage is not None:
            self._child(self.tokens, model, runtime, "prompt").inc(usage.prompt_tokens)
            self._child(self.tokens, model, runtime, "completion").inc(usage.completion_tokens)

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def idempotency_hit(self, state: str) -> None:
        self.idempotency_hits.labels(state).inc()

    def track_inflight(self, kind: str, read: Callable[[], int]) -> None:
        self.inflight.labels(kind).set_function(read)
