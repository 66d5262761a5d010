"""The router's configuration: a YAML (or TOML) file plus `INFERBUS_*` overrides.

Selection keys (`llm_profiles`, `selection_policies`, `agents`, `default_profile`,
`hard_default`, `cloud_providers`) sit at the top level of the file, as operators write
them, and are gathered into one `SelectionConfig`. Cloud keys (`providers`, `fallbacks`,
`failover`) sit at the top level too (router/cloud/providers.py, router/cloud/cooldowns.py).
Tenants are `http.api_keys` (router/admission/tenants.py); the queue's classes and bounds:

    admission:
      classes: [interactive, batch]   # highest first; a tenant's `priority` names one
      default_class: interactive      # tenants that name none, plain keys, no keys at all
      lower_class_share: 0.05         # of the starts while a higher class waits too
      max_wait_ms: 30000              # the longest a call waits for a slot
      max_queued: 10000               # calls waiting in this router, all tenants together
      keepalive_ms: 5000              # a waiting stream hears a comment this often
    limits:
      shared: false                   # true: rpm and tpm across routers (JetStream KV)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from router.attempts.board import BreakerSettings
from router.cloud.cooldowns import FailoverSettings
from router.cloud.providers import PROVIDER_NAME_PATTERN, ProviderConfig, resolve_cloud_model
from router.fleet.view import FleetSettings
from router.selection.profiles import SelectionConfig
from services.images import ImageSettings
from services.keystore import DEFAULT_BUCKET, DEFAULT_MAX_BYTES, MAX_TTL_S
from services.runtimes.base import RuntimeKind
from services.settings import FileSettings, NatsAuth, NatsUrls, load_settings
from services.subjects import validate_node_id, validate_prefix
from services.tracing import TelemetrySettings
from services.wire import MAX_TIMEOUT_MS

# A budget the router sends travels as the job's `timeout_ms`, which workers bound.
_BUDGET_MS = Field(gt=0, le=MAX_TIMEOUT_MS)

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


_CLASS_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


class AdmissionSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    classes: Annotated[
        tuple[Annotated[str, Field(pattern=_CLASS_NAME)], ...], Field(min_length=1)
    ] = ("interactive", "batch")
    default_class: str | None = None  # None: the first (highest) class
    # While a higher class waits too, each lower class that waits still gets this share of
    # the starts, so it never starves; 0 makes priority strict.
    lower_class_share: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    max_wait_ms: Annotated[int, Field(ge=0)] = 30_000
    max_queued: Annotated[int, Field(ge=0)] = 10_000
    keepalive_ms: Annotated[int, Field(ge=100)] = 5_000

    @field_validator("classes")
    @classmethod
    def _classes_are_distinct(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(classes)) != len(classes):
            raise ValueError("a class is named twice")
        return classes

    @model_validator(mode="after")
    def _default_is_a_class(self) -> AdmissionSettings:
        if self.default_class is not None and self.default_class not in self.classes:
            raise ValueError(
                f"default_class: {self.default_class!r} is not one of classes {list(self.classes)}"
            )
        return self

    @property
    def fallback_class(self) -> str:
        return self.default_class or self.classes[0]

    def rank(self, class_name: str) -> int:
        """0 for the highest class; raises KeyError for a name that is not a class."""
        return self.classes.index(class_name) if class_name in self.classes else _no(class_name)


def _no(class_name: str) -> int:
    raise KeyError(class_name)


class LimitsSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Count tenants' rpm, tpm and max_concurrent across every router in JetStream KV
    # (router/admission/shared_limits.py, shared_running.py); max_queued stays per router.
    shared: bool = False
    bucket: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$")] = "inferbus_limits"
    # How long a router's running calls count after it stopped renewing them (it died).
    lease_s: Annotated[float, Field(ge=1, le=60)] = 10.0
    # The most the shared bucket holds, set when a router makes it (counters and leases
    # per tenant are small; past it a router admits on its own counts, logged).
    max_bytes: Annotated[int, Field(gt=0)] = 64 << 20


_Limit = Annotated[int | None, Field(ge=0)]


class TenantConfig(BaseModel):
    """One entry of `http.api_keys` written as a tenant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    key: SecretStr | None = None
    key_env: Annotated[str | None, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = None
    priority: str | None = None  # a class of `admission.classes`; None: the default class
    weight: Annotated[float, Field(gt=0)] = 1.0
    max_concurrent: _Limit = None
    rpm: _Limit = None  # requests per minute
    tpm: _Limit = None  # tokens per minute, counted from usage as answers come back
    max_queued: _Limit = None  # calls of this tenant waiting at once (0: never wait)
    models: tuple[str, ...] | None = None  # the models it may use; None: any
    admin: bool = False  # may call the operator's write routes (POST /admin/reload)

    @model_validator(mode="after")
    def _one_key(self) -> TenantConfig:
        if self.key is None and self.key_env is None:
            raise ValueError(f"tenant {self.name!r} needs a key: `key` or `key_env`")
        if self.key is not None and self.key_env is not None:
            raise ValueError(f"tenant {self.name!r}: `key` or `key_env`, not both")
        if self.key is not None and not self.key.get_secret_value():
            raise ValueError(f"tenant {self.name!r}: the key is empty")
        return self


def tenant_configs(entries: Sequence[SecretStr | TenantConfig]) -> list[TenantConfig]:
    """Every entry as a tenant: a plain key becomes tenant `key-<n>` of the default class."""
    return [
        entry if isinstance(entry, TenantConfig) else TenantConfig(name=f"key-{n}", key=entry)
        for n, entry in enumerate(entries)
    ]


def check_tenant_entries(
    entries: Sequence[SecretStr | TenantConfig], admission: AdmissionSettings
) -> None:
    """What the config alone can tell is wrong, naming the entry: a raise of ValueError."""
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    for n, tenant in enumerate(tenant_configs(entries)):
        where = f"http.api_keys[{n}]"
        if tenant.name in names:
            raise ValueError(
                f"{where}.name: {tenant.name!r} is also api_keys[{names[tenant.name]}]"
            )
        names[tenant.name] = n
        if tenant.priority is not None and tenant.priority not in admission.classes:
            raise ValueError(
                f"{where}.priority: {tenant.priority!r} is not a class of "
                f"admission.classes {list(admission.classes)}"
            )
        if tenant.key is not None:
            secret = tenant.key.get_secret_value()
            if secret in keys:
                raise ValueError(f"{where}.key: the same key as api_keys[{keys[secret]}]")
            keys[secret] = n


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8090
    max_body_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    max_image_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024  # each, decoded
    # Tenants, or plain bearer keys; none = open (router/admission/tenants.py).
    # Also INFERBUS_HTTP__API_KEYS='["k1","k2"]'.
    api_keys: list[SecretStr | TenantConfig] = Field(default_factory=list)


class LocalRuntime(_Section):
    """The router node's own runtime, reached over HTTP: works even when NATS is down."""

    kind: RuntimeKind
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    api_key_env: str | None = None


class OffloadSettings(_Section):
    attempts: Annotated[int, Field(ge=1)] = 3  # remote tries before local, then static
    attempt_timeout_ms: Annotated[int, _BUDGET_MS] = 120_000  # cap per remote try
    remote_concurrency: Annotated[int, Field(ge=1)] = 512
    default_budget_ms: Annotated[int, _BUDGET_MS] = 120_000  # when a request sends none
    # Streams: a node that sends no first token in time is left for the next one; after
    # the first token a lost node's stream is resumed instead (`resume` below).
    first_token_timeout_ms: Annotated[int, Field(gt=0)] = 60_000
    idle_timeout_ms: Annotated[int, Field(gt=0)] = 30_000  # between two tokens
    # While a node holds jobs, it is probed on node.<id>.caps: no responders = gone at
    # once; `liveness_misses` probes unanswered within `liveness_timeout_ms` = hung.
    liveness_interval_ms: Annotated[int, Field(gt=0)] = 200
    liveness_timeout_ms: Annotated[int, Field(gt=0)] = 600
    liveness_misses: Annotated[int, Field(ge=1)] = 3
    # A stream whose node is lost after its first piece goes on on another node serving
    # the model, which continues the text so far (router/attempts/resume.py), at most
    # `resume_attempts` times per request.
    resume: bool = True
    resume_attempts: Annotated[int, Field(ge=0, le=10)] = 2


class IdempotencySettings(_Section):
    """Answers kept per `Idempotency-Key` (router/admission/idempotency.py)."""

    ttl_s: Annotated[float, Field(gt=0, le=MAX_TTL_S)] = 600
    max_entries: Annotated[int, Field(ge=1)] = 10_000
    # "jetstream": keys are also claimed, and answers kept, in the shared KV bucket, so
    # duplicates through any router reach one runtime call (ops/nats/README.md).
    store: Literal["memory", "jetstream"] = "memory"
    bucket: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]+$")] = DEFAULT_BUCKET
    # A router's claim not renewed for this long is free again (the router died or hung).
    lease_s: Annotated[float, Field(gt=0)] = 3
    # The most the shared bucket holds on the NATS server's disk, set when a router makes
    # it; past it a new key runs unguarded (logged) until kept answers expire (ttl_s).
    max_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_BYTES
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
    telemetry: TelemetrySettings = TelemetrySettings()  # OTLP traces (services/tracing.py)
    admission: AdmissionSettings = AdmissionSettings()  # classes and the queue's bounds
    limits: LimitsSettings = LimitsSettings()

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

    @model_validator(mode="after")
    def _tenants_are_sound(self) -> RouterSettings:
        """Names and literal keys unique, every priority a configured class."""
        check_tenant_entries(self.http.api_keys, self.admission)
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


def config_warnings(settings: RouterSettings) -> list[str]:
    """What the configuration names that requests will skip without a word: chain entries
    (global and profile `fallbacks`) that no provider claims. Said at start."""
    chains = [("fallbacks", settings.fallbacks)] + [
        (f"llm_profiles.{name}.fallbacks", profile.fallbacks)
        for name, profile in settings.selection.llm_profiles.items()
    ]
    return [
        f"{field}[{index}]: {entry!r} is claimed by no provider, so chains skip it "
        "(list it in a provider's models or aliases, or write provider/model)"
        for field, chain in chains
        for index, entry in enumerate(chain)
        if resolve_cloud_model(entry, settings.providers) is None
    ]
