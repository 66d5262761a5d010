"""Cloud providers as operators configure them (`providers:`), and their keys resolved.

    providers:
      openai:
        base_url: https://api.openai.com/v1
        api_keys: [OPENAI_KEY_A, OPENAI_KEY_B]     # env var NAMES, in rotation order
        models: [gpt-4o-mini, gpt-4o]              # optional allow-list
        aliases: {fast: gpt-4o-mini}               # optional: chain name -> provider's id
        pricing: {gpt-4o-mini: {input_per_1m: 0.15, output_per_1m: 0.6}}
    fallbacks: [gpt-4o-mini, openrouter/meta-llama/llama-3.1-8b-instruct]

Keys never live in the file: `api_keys` names environment variables, and the key id shown
anywhere (logs, /providers, errors) is that name. A value that looks like a key instead of
a name is refused without being echoed (`hide_input_in_errors`). `ProviderKey` keeps the
secret out of its repr.

A chain entry names a cloud model as `provider/model`, or as a bare name that a provider
claims through its `aliases` or its `models` allow-list (first provider in file order
wins). A provider without an allow-list claims only the `provider/...` form: nothing
leaves the building unless configured to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from services.capabilities import Pricing

__all__ = [
    "CloudModel",
    "ProviderConfig",
    "ProviderConfigError",
    "ProviderKey",
    "ProviderKind",
    "resolve_cloud_model",
    "resolve_keys",
]

ProviderKind = Literal["openai", "ollama"]
PROVIDER_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"  # no "/": it splits provider/model
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


def _env_name(value: object) -> object:
    """Refuse a key pasted where its variable's name belongs, without repeating it."""
    if isinstance(value, str) and not _ENV_NAME.fullmatch(value):
        raise ValueError(
            "must name an environment variable (letters, digits, _) that holds the key, "
            "not the key itself"
        )
    return value


_EnvName = Annotated[str, BeforeValidator(_env_name)]
_ModelName = Annotated[str, Field(min_length=1, max_length=300)]
KEYLESS_ID = "#0"


class ProviderConfigError(ValueError):
    """A provider cannot be used as configured; the message names the field, never a key."""


class ProviderConfig(BaseModel):
    """One cloud (or remote Ollama) endpoint and the keys to rotate through."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    base_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    kind: ProviderKind = "openai"
    api_keys: list[_EnvName] = []
    models: list[_ModelName] | None = None
    aliases: dict[_ModelName, _ModelName] = {}
    pricing: dict[_ModelName, Pricing] = {}

    @model_validator(mode="after")
    def _coherent(self) -> ProviderConfig:
        if len(set(self.api_keys)) != len(self.api_keys):
            raise ValueError("api_keys: an environment variable is listed twice")
        if self.models is not None:
            allowed = set(self.models)
            for alias, target in self.aliases.items():
                if target not in allowed:
                    raise ValueError(
                        f"aliases.{alias}: {target!r} is not in this provider's models list"
                    )
            known = allowed | set(self.aliases) | {"default"}
            for priced in self.pricing:
                if priced not in known:
                    raise ValueError(f"pricing.{priced}: not a model of this provider")
        return self

    def upstream_model(self, name: str) -> str | None:
        """The provider's own id for `name` (alias or listed model), None when not served."""
        if name in self.aliases:
            return self.aliases[name]
        if self.models is None or name in self.models:
            return name
        return None

    def claims(self, name: str) -> bool:
        """Whether a bare chain entry means this provider (alias or allow-listed)."""
        return name in self.aliases or (self.models is not None and name in self.models)

    def price_of(self, model: str) -> Pricing | None:
        return self.pricing.get(model) or self.pricing.get("default")


def listed_models(providers: Mapping[str, ProviderConfig]) -> dict[str, str]:
    """Every model name a request may use to reach a provider (its allow-list and its
    aliases), each with the provider it reaches: the first that claims it, in file order,
    as `resolve_cloud_model` resolves a bare name. A provider without an allow-list serves
    whatever it is asked for, so it lists only its aliases."""
    listed: dict[str, str] = {}
    for provider_name, provider in providers.items():
        for name in [*(provider.models or ()), *provider.aliases]:
            listed.setdefault(name, provider_name)
    return listed


@dataclass(frozen=True, slots=True)
class CloudModel:
    """A chain entry resolved: which provider, and the model id to send it."""

    provider: str
    model: str  # the provider's id, sent as "model"
    name: str  # as the chain named it, for health and /providers


def resolve_cloud_model(name: str, providers: Mapping[str, ProviderConfig]) -> CloudModel | None:
    """The provider and upstream id a chain entry means, or None (a fleet model).

    `provider/model` picks the provider explicitly (the rest may contain "/", as
    OpenRouter's ids do); a bare name goes to the first provider that claims it.
    """
    head, slash, rest = name.partition("/")
    if slash and head in providers:
        upstream = providers[head].upstream_model(rest)
        return None if upstream is None else CloudModel(head, upstream, name)
    for provider_name, provider in providers.items():
        if provider.claims(name):
            upstream = provider.upstream_model(name)
            if upstream is not None:
                return CloudModel(provider_name, upstream, name)
    return None


@dataclass(frozen=True, slots=True)
class ProviderKey:
    """One API key of a provider: its id (the env var name) and, unprinted, its value."""

    key_id: str
    secret: str = field(repr=False)

    def __str__(self) -> str:
        return self.key_id


def resolve_keys(
    provider_name: str, provider: ProviderConfig, environ: Mapping[str, str]
) -> tuple[ProviderKey, ...]:
    """The provider's keys in rotation order, read from `environ` (passed in, not global).

    A provider with no `api_keys` gets one keyless entry (id "#0"), so that the chain walks
    every provider the same way.

    Raises:
        ProviderConfigError: a named variable is unset or empty (its name is in the message).
    """
    if not provider.api_keys:
        return (ProviderKey(KEYLESS_ID, ""),)
    keys: list[ProviderKey] = []
    for index, env_name in enumerate(provider.api_keys):
        secret = environ.get(env_name, "").strip()
        if not secret:
            raise ProviderConfigError(
                f"providers.{provider_name}.api_keys[{index}]: environment variable "
                f"{env_name} is not set"
            )
        keys.append(ProviderKey(env_name, secret))
    return tuple(keys)
