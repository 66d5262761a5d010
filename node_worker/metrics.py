"""The worker's Prometheus metrics, on a registry of its own (several workers may share a
process in tests and in `inferbus up --workers N`)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.wire import JobResponse

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
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
        self.jobs.labels(job_type, model or "", status).inc()
        if seconds > 0:
            self.latency.labels(job_type).observe(seconds)

    def idempotency_hit(self, state: str) -> None:
        self.idempotency_hits.labels(state).inc()

    def track_inflight(self, kind: str, read: Callable[[], int]) -> None:
        self.inflight.labels(kind).set_function(read)
