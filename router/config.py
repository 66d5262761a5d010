"""The router's configuration: a YAML (or TOML) file plus `INFERBUS_*` overrides.

Selection keys (`llm_profiles`, `selection_policies`, `agents`, `default_profile`,
`hard_default`, `cloud_providers`) sit at the top level of the file, as operators write
them, and are gathered into one `SelectionConfig`. Cloud keys (`providers`, `fallbacks`,
`failover`) sit at the top level too (router/cloud/providers.py, router/cloud/cooldowns.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from router.attempts.board import BreakerSettings
from router.cloud.cooldowns import FailoverSettings
from router.cloud.providers import PROVIDER_NAME_PATTERN, ProviderConfig
from router.fleet.view import FleetSettings
from router.selection.profiles import SelectionConfig
from services.images import ImageSettings
from services.keystore import DEFAULT_BUCKET
from services.runtimes.base import RuntimeKind
from services.settings import FileSettings, NatsAuth, NatsUrls, load_settings
from services.subjects import validate_node_id, validate_prefix

SELECTION_KEYS = (
    "llm_profiles",
    "selection_policies",
    "agents",
    "default_profile",
    "hard_default",
    "cloud_providers",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8090
    max_body_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    max_image_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024  # each, decoded
    # Bearer keys; none = open. Also INFERBUS_HTTP__API_KEYS='["k1","k2"]'.
    api_keys: list[SecretStr] = Field(default_factory=list)


class LocalRuntime(_Section):
    """The router node's own runtime, reached over HTTP: works even when NATS is down."""

    kind: RuntimeKind
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    api_key_env: str | None = None


class OffloadSettings(_Section):
    attempts: Annotated[int, Field(ge=1)] = 3  # remote tries before local, then static
    attempt_timeout_ms: Annotated[int, Field(gt=0)] = 120_000  # cap per remote try
    remote_concurrency: Annotated[int, Field(ge=1)] = 512
    default_budget_ms: Annotated[int, Field(gt=0)] = 120_000  # when a request sends none
    # Streams: a node that sends no first token in time is left for the next one (before
    # the first token only: after it, switching nodes would repeat text).
    first_token_timeout_ms: Annotated[int, Field(gt=0)] = 60_000
    idle_timeout_ms: Annotated[int, Field(gt=0)] = 30_000  # between two tokens
    # While a node holds jobs, it is probed on node.<id>.caps: no responders = gone at
    # once; `liveness_misses` probes unanswered within `liveness_timeout_ms` = hung.
    liveness_interval_ms: Annotated[int, Field(gt=0)] = 200
    liveness_timeout_ms: Annotated[int, Field(gt=0)] = 600
    liveness_misses: Annotated[int, Field(ge=1)] = 3


class IdempotencySettings(_Section):
    """Answers kept per `Idempotency-Key` (router/admission/idempotency.py)."""

    ttl_s: Annotated[float, Field(gt=0)] = 600
    max_entries: Annotated[int, Field(ge=1)] = 10_000
    # "jetstream": keys are also claimed, and answers kept, in the shared KV bucket, so
    # duplicates through any router reach one runtime call (ops/nats/README.md).
    store: Literal["memory", "jetstream"] = "memory"
    bucket: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$")] = DEFAULT_BUCKET
    # A router's claim not renewed for this long is free again (the router died or hung).
    lease_s: Annotated[float, Field(gt=0)] = 3
    # The key every router seals its kept answers with: 64 hex characters (32 bytes), the
    # same on every router, known to no worker. Needed with store "jetstream"; best given
    # as INFERBUS_IDEMPOTENCY__SEAL_KEY.
    seal_key: SecretStr | None = None

    @field_validator("seal_key")
    @classmethod
    def _hex_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value.get_secret_value()):
            raise ValueError("must be 64 hex characters (32 bytes; `openssl rand -hex 32`)")
        return value

    @model_validator(mode="after")
    def _sealed_when_shared(self) -> IdempotencySettings:
        if self.store == "jetstream" and self.seal_key is None:
            raise ValueError(
                "idempotency.seal_key is needed with idempotency.store = jetstream: routers "
                "seal the answers they keep (64 hex characters, the same on every router)"
            )
        return self

    def sealing_key(self) -> bytes:
        assert self.seal_key is not None
        return bytes.fromhex(self.seal_key.get_secret_value())


class RouterSettings(FileSettings):
    model_config = SettingsConfigDict(
        env_prefix="INFERBUS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,  # a key pasted in the wrong place must not be echoed
    )

    nats_url: NatsUrls = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    nats: NatsAuth = NatsAuth()
    subject_prefix: str = ""
    http: HttpSettings = HttpSettings()
    local_node: str | None = None
    local_runtime: LocalRuntime | None = None
    offload: OffloadSettings = OffloadSettings()
    breakers: BreakerSettings = BreakerSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    fleet: FleetSettings = FleetSettings()
    selection: SelectionConfig = SelectionConfig()
    # Cloud providers and the global model chain (router/cloud/targets.py).
    providers: dict[Annotated[str, Field(pattern=PROVIDER_NAME_PATTERN)], ProviderConfig] = Field(
        default_factory=dict
    )
    fallbacks: list[str] = Field(default_factory=list)
    failover: FailoverSettings = FailoverSettings()
    images: ImageSettings = ImageSettings()  # URL images: refuse (default) or fetch here

    @model_validator(mode="before")
    @classmethod
    def _gather_selection(cls, values: Any) -> Any:
        if isinstance(values, dict) and any(key in values for key in SELECTION_KEYS):
            values = dict(values)
            selection = dict(values.pop("selection", None) or {})
            for key in SELECTION_KEYS:
                if key in values:
                    selection[key] = values.pop(key)
            values["selection"] = selection
        return values

    @model_validator(mode="after")
    def _profiles_name_served_provider_models(self) -> RouterSettings:
        """A profile naming a configured provider must name a model that provider serves."""
        for name, profile in self.selection.llm_profiles.items():
            provider = self.providers.get(profile.provider)
            if provider is not None and provider.upstream_model(profile.model) is None:
                raise ValueError(
                    f"llm_profiles.{name}.model: {profile.model!r} is not in "
                    f"providers.{profile.provider}'s models or aliases"
                )
        return self

    @field_validator("local_node")
    @classmethod
    def _node_id_is_a_token(cls, node_id: str | None) -> str | None:
        return None if node_id is None else validate_node_id(node_id)

    @field_validator("subject_prefix")
    @classmethod
    def _prefix_is_tokens(cls, prefix: str) -> str:
        return validate_prefix(prefix)


def load_router_settings(path: Path | None, **overrides: Any) -> RouterSettings:
    return load_settings(RouterSettings, path, **overrides)
