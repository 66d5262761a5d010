"""The worker's configuration: a TOML file plus `INFERBUS_*` environment overrides.

Frozen and validated at start; a bad value fails with a message naming the field, so an
operator finds the typo before a job does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.capabilities import Pricing
from services.images import ImageSettings
from services.runtimes.base import RuntimeKind
from services.settings import FileSettings, NatsAuth, NatsUrls, load_settings
from services.subjects import validate_node_id, validate_prefix


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Section):
    llm_concurrency: Annotated[int, Field(ge=1)] = 4
    vision_concurrency: Annotated[int, Field(ge=1)] = 1
    # Larger jobs are refused with PAYLOAD_TOO_LARGE; the NATS server's max_payload
    # (1 MiB by default) is the other bound, enforced by the server itself.
    max_request_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    retry_after_ms: Annotated[int, Field(ge=0)] = 250


class Idempotency(_Section):
    ttl_s: Annotated[float, Field(gt=0)] = 600
    max_entries: Annotated[int, Field(ge=1)] = 10_000


class Backend(_Section):
    kind: RuntimeKind
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    models: list[str] | None = None
    api_key_env: str | None = None
    enabled: bool = True
    # model name (or "default") -> price per million tokens; a job's answer carries its cost
    pricing: dict[str, Pricing] = {}

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
    default_timeout_ms: Annotated[int, Field(gt=0)] = 120_000
    rediscover_s: Annotated[float, Field(gt=0)] = 300
    heartbeat_s: Annotated[float, Field(gt=0)] = 10
    drain_grace_s: Annotated[float, Field(ge=0)] = 30
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    metrics_host: str = "127.0.0.1"
    limits: Limits = Limits()
    idempotency: Idempotency = Idempotency()
    health: Health = Health()
    images: ImageSettings = ImageSettings()  # URL images: refuse (default) or fetch here
    backends: list[Backend] = Field(default_factory=list)

    @field_validator("node_id")
    @classmethod
    def _node_id_is_a_token(cls, node_id: str) -> str:
        return validate_node_id(node_id)

    @field_validator("subject_prefix")
    @classmethod
    def _prefix_is_tokens(cls, prefix: str) -> str:
        return validate_prefix(prefix)


def load_worker_settings(path: Path | None, **overrides: Any) -> WorkerSettings:
    """Read the TOML file (if any), apply env and `overrides`; raise ConfigError."""
    return load_settings(WorkerSettings, path, **overrides)
