"""The router's configuration: a YAML (or TOML) file plus `INFERBUS_*` overrides.

Selection keys (`llm_profiles`, `selection_policies`, `agents`, `default_profile`,
`hard_default`, `cloud_providers`) sit at the top level of the file, as operators write
them, and are gathered into one `SelectionConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from router.breakers import BreakerSettings
from router.profiles import SelectionConfig
from services.images import ImageSettings
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


class RouterSettings(FileSettings):
    model_config = SettingsConfigDict(
        env_prefix="INFERBUS_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    nats_url: NatsUrls = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    nats: NatsAuth = NatsAuth()
    subject_prefix: str = ""
    http: HttpSettings = HttpSettings()
    local_node: str | None = None
    local_runtime: LocalRuntime | None = None
    offload: OffloadSettings = OffloadSettings()
    breakers: BreakerSettings = BreakerSettings()
    selection: SelectionConfig = SelectionConfig()
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
