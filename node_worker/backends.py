"""Each configured runtime of the node, with its health and what it has done.

States: unknown (not probed yet) → healthy | degraded (answers, but slowly or with recent
job errors below the unhealthy bar) | loading (answers "loading model") | unhealthy (the
probe failed, the runtime refused our key, or too many recent errors); disabled by
configuration or when it cannot be used as configured (an API key variable that is not
set). Only healthy and degraded runtimes serve models.
`next_state` is the pure decision; `Backend` holds the mutable facts around it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import httpx

from node_worker.config import BackendConfig, Health
from node_worker.model_capabilities import with_capabilities
from services.capabilities import BackendStats, HealthState, RuntimeStatus
from services.errors import ErrorCode, InferbusError
from services.runtimes import make_runtime
from services.runtimes.base import ModelInfo, Runtime
from services.runtimes.errors import RuntimeLoading, refused_our_key
from services.wire import JobResponse

log = logging.getLogger("inferbus.worker.backends")

SERVING_STATES: frozenset[HealthState] = frozenset({"healthy", "degraded"})


def next_state(
    *, probe_ok: bool, latency_ms: float | None, recent_errors: int, policy: Health
) -> HealthState:
    """A runtime's state after a probe, from the probe and the job errors since the last one."""
    if not probe_ok or recent_errors >= policy.unhealthy_errors:
        return "unhealthy"
    slow = latency_ms is not None and latency_ms > policy.degraded_latency_ms
    return "degraded" if slow or recent_errors > 0 else "healthy"


@dataclass
class Backend:
    config: BackendConfig
    runtime: Runtime | None  # None when disabled
    state: HealthState = "unknown"
    latency_ms: float | None = None
    last_error: str | None = None
    recent_errors: int = 0
    models: list[ModelInfo] = field(default_factory=list)
    stats: BackendStats = field(default_factory=BackendStats)

    @property
    def serving(self) -> bool:
        return self.state in SERVING_STATES

    def probed(self, latency_ms: float | None, error: InferbusError | None, policy: Health) -> None:
        """Take a probe's outcome; job errors counted since the last probe weigh in once.

        A runtime still loading its model is `loading`: not serving, and no error. One
        that refuses our key is unhealthy with an `auth:` error. A healthy one carries no
        error: an old one beside a healthy state would only mislead.
        """
        self.latency_ms = latency_ms
        if isinstance(error, RuntimeLoading):
            self.state = "loading"
            return
        if error is not None:
            label = "auth: " if refused_our_key(error) else ""
            self.last_error = f"{label}{error.code.value}: {error.message}"
        self.state = next_state(
            probe_ok=error is None,
            latency_ms=latency_ms,
            recent_errors=self.recent_errors,
            policy=policy,
        )
        if self.state == "healthy":
            self.last_error = None
        self.recent_errors = 0

    @property
    def slots(self) -> int | None:
        """Jobs this runtime runs at once, when it says (llama.cpp's total_slots)."""
        known = [model.parallel for model in self.models if model.parallel is not None]
        return max(known) if known else None

    def listed(self, models: list[ModelInfo]) -> None:
        """Keep what the runtime lists, less what the operator did not allow, each model
        with its capabilities decided (override, runtime, name)."""
        allow = self.config.models
        allowed = models if allow is None else [m for m in models if m.name in allow]
        self.models = with_capabilities(allowed, self.config.kind, self.config.capabilities)

    def record_job(self, response: JobResponse) -> None:
        """Count a job this runtime ran: tokens and cost when ok, an error otherwise."""
        stats = self.stats
        if response.status == "ok" and response.result is not None:
            usage = response.result.usage
            self.stats = stats.model_copy(
                update={
                    "invocations": stats.invocations + 1,
                    "tokens_in": stats.tokens_in + usage.prompt_tokens,
                    "tokens_out": stats.tokens_out + usage.completion_tokens,
                    "cost": round(stats.cost + (response.result.cost or 0.0), 8),
                }
            )
            return
        self.stats = stats.model_copy(
            update={"invocations": stats.invocations + 1, "errors": stats.errors + 1}
        )
        if response.error is not None and response.error.code in RUNTIME_FAULTS:
            self.recent_errors += 1
            self.last_error = f"{response.error.code.value}: {response.error.message}"

    def status(self) -> RuntimeStatus:
        return RuntimeStatus(
            kind=self.config.kind,
            url=self.config.url,
            state=self.state,
            latency_ms=None if self.latency_ms is None else round(self.latency_ms, 2),
            models=len(self.models) if self.serving else 0,
            last_error=self.last_error,
            stats=self.stats,
        )


# Job errors that say something about the runtime's health (not about the job).
RUNTIME_FAULTS = frozenset({ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.BACKEND_ERROR})


def build_backend(config: BackendConfig, client: httpx.AsyncClient) -> Backend:
    """A Backend for a configured runtime; disabled (with a warning) when it cannot be used."""
    if not config.enabled:
        return Backend(config, None, state="disabled", last_error="disabled in configuration")
    api_key = None
    if config.api_key_env:
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            reason = f"api_key_env {config.api_key_env} is not set"
            log.warning("backend %s at %s skipped: %s", config.kind, config.url, reason)
            return Backend(config, None, state="disabled", last_error=reason)
    return Backend(config, make_runtime(config.kind, config.url, client, api_key=api_key))
