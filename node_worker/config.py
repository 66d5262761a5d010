"""The worker's configuration: a TOML file plus `INFERBUS_*` environment overrides.

Frozen and validated at start; a bad value fails with a message naming the field, so an
operator finds the typo before a job does.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from services.capabilities import Pricing
from services.runtimes.base import RuntimeKind
from services.subjects import validate_node_id, validate_prefix


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


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


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERBUS_", extra="forbid", frozen=True)

    node_id: str
    nats_url: Annotated[list[str], NoDecode] = ["nats://127.0.0.1:4222"]
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
    backends: list[Backend] = []

    @field_validator("node_id")
    @classmethod
    def _node_id_is_a_token(cls, node_id: str) -> str:
        return validate_node_id(node_id)

    @field_validator("subject_prefix")
    @classmethod
    def _prefix_is_tokens(cls, prefix: str) -> str:
        return validate_prefix(prefix)

    @field_validator("nats_url", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        """One URL, a comma-separated list (handy in env vars), or a TOML list."""
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file, which arrives as init arguments.
        return (env_settings, init_settings)


def load_worker_settings(path: Path | None, **overrides: Any) -> WorkerSettings:
    """Read the TOML file (if any), apply env and `overrides`; raise ConfigError."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    values.update(overrides)
    try:
        return WorkerSettings(**values)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source=str(path or "settings"))) from exc


def describe_validation_error(exc: pydantic.ValidationError, *, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(root)"
        lines.append(f"  {field}: {error['msg']}")
    return "\n".join(lines)
