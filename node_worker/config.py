"""The worker's configuration: a TOML file plus `INFERBUS_*` environment overrides.

Frozen and validated at start; a bad value fails with a message naming the field, so an
operator finds the typo before a job does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.capabilities import HEARTBEATS_PER_TTL, MAX_HEARTBEAT_S, MAX_RECORD_TTL_S, Pricing
from services.images import ImageSettings
from services.keystore import DEFAULT_BUCKET, MAX_TTL_S
from services.needs import Capability
from services.runtimes.base import RuntimeKind
from services.settings import FileSettings, NatsAuth, NatsUrls, load_settings
from services.subjects import validate_node_id, validate_prefix
from services.tracing import TelemetrySettings
from services.wire import MAX_TIMEOUT_MS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Section):
    llm_concurrency: Annotated[int, Field(ge=1)] = 4
    vision_concurrency: Annotated[int, Field(ge=1)] = 1
    embed_concurrency: Annotated[int, Field(ge=1)] = 4
    # Larger jobs are refused with PAYLOAD_TOO_LARGE; the NATS server's max_payload
    # (1 MiB by default) is the other bound, enforced by the server itself.
    max_request_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    retry_after_ms: Annotated[int, Field(ge=0)] = 250


class Idempotency(_Section):
    ttl_s: Annotated[float, Field(gt=0, le=MAX_TTL_S)] = 600
    max_entries: Annotated[int, Field(ge=1)] = 10_000
    # "jetstream": keys are also claimed in this node's space of the routers' JetStream KV
    # bucket, so this node's restarts and replicas run a key once. Only where the node's
    # credentials are granted JetStream (an open server; the shipped setups grant workers
    # none: ops/nats/README.md); across nodes, the routers' store does it.
    store: Literal["memory", "jetstream"] = "memory"
    bucket: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$")] = DEFAULT_BUCKET
    # A claim not renewed for this long is free again (its node died or hung).
    lease_s: Annotated[float, Field(gt=0)] = 3


class BackendConfig(_Section):
    kind: RuntimeKind
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    models: list[str] | None = None
    api_key_env: str | None = None
    enabled: bool = True
    # model name (or "default") -> price per million tokens; a job's answer carries its cost
    pricing: dict[str, Pricing] = {}
    # model name (or "default") -> what it can do, replacing what the runtime or the name
    # says: e.g. {"qwen3:8b" = ["completion", "tools"]} for a vLLM started with tool parsing
    capabilities: dict[str, list[Capability]] = {}

    def price_of(self, model: str) -> Pricing | None:
        return self.pricing.get(model) or self.pricing.get("default")


class Health(_Section):
    """When a runtime that answers counts as degraded, and when as unhealthy."""

    degraded_latency_ms: Annotated[float, Field(gt=0)] = 1000
    unhealthy_errors: Annotated[int, Field(ge=1)] = 5


class WorkerSettings(FileSettings):
    model_config = SettingsConfigDict(
        env_prefix="INFERBUS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    node_id: str
    nats_url: NatsUrls = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    nats: NatsAuth = NatsAuth()
    subject_prefix: str = ""
    default_timeout_ms: Annotated[int, Field(gt=0, le=MAX_TIMEOUT_MS)] = 120_000
    rediscover_s: Annotated[float, Field(gt=0)] = 300
    heartbeat_s: Annotated[float, Field(gt=0)] = 10
    drain_grace_s: Annotated[float, Field(ge=0)] = 30
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    metrics_host: str = "127.0.0.1"
    limits: Limits = Limits()
    idempotency: Idempotency = Idempotency()
    health: Health = Health()
    images: ImageSettings = ImageSettings()  # URL images: refuse (default) or fetch here
    telemetry: TelemetrySettings = TelemetrySettings()  # OTLP traces (services/tracing.py)
    backends: list[BackendConfig] = Field(default_factory=list)
    # Several workers sharing this node id on purpose (replicas in the queue group): no
    # warning when another instance announces the same id.
    replicas: bool = False

    @field_validator("node_id")
    @classmethod
    def _node_id_is_a_token(cls, node_id: str) -> str:
        return validate_node_id(node_id)

    @field_validator("subject_prefix")
    @classmethod
    def _prefix_is_tokens(cls, prefix: str) -> str:
        return validate_prefix(prefix)

    @field_validator("heartbeat_s")
    @classmethod
    def _record_can_carry_the_heartbeat(cls, heartbeat_s: float) -> float:
        """The record lives a few heartbeats, and routers refuse a record that would live
        longer than their bound: such a worker would be invisible to the whole fleet."""
        if not heartbeat_s <= MAX_HEARTBEAT_S:
            raise ValueError(
                f"at most {MAX_HEARTBEAT_S:g} s: a node's record lives {HEARTBEATS_PER_TTL} "
                f"heartbeats and routers refuse records that live over {MAX_RECORD_TTL_S:g} s"
            )
        return heartbeat_s


def load_worker_settings(path: Path | None, **overrides: Any) -> WorkerSettings:
    """Read the TOML file (if any), apply env and `overrides`; raise ConfigError."""
    return load_settings(WorkerSettings, path, **overrides)
