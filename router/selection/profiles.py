"""Selection's configuration: named LLM profiles, policies over them, agents' defaults.

Operators write these at the top level of the router's config file (`router.config` gathers
them into one `SelectionConfig`). Everything is frozen and validated at construction: a
policy, an agent or `default_profile` that names a profile which does not exist fails
loading with the offending field in the message, instead of surfacing as a silent fallback
on the first request that needs it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.settings import HttpUrl

__all__ = [
    "DEFAULT_CLOUD_PROVIDERS",
    "AgentConfig",
    "HardDefault",
    "LlmProfile",
    "RequiredType",
    "SelectionConfig",
    "SelectionPolicy",
]

RequiredType = Literal["llm", "vision", "code", "embed", "cloud_llm"]

DEFAULT_CLOUD_PROVIDERS: frozenset[str] = frozenset(
    {"openai", "anthropic", "deepseek", "mistral", "grok", "groq", "openrouter", "together"}
)

_Name = Annotated[str, Field(min_length=1)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlmProfile(_Frozen):
    """A named model at a provider: what a profile means when the fleet cannot serve it.

    `base_url` and `api_key_env` matter for cloud providers and for runtimes outside the
    fleet; a local provider without `base_url` means the router node's own runtime.
    `provider` may name an entry of `providers:`, whose keys and chain it then uses;
    `fallbacks` are models tried after `model` (before the global `fallbacks:`).
    """

    provider: _Name = "ollama"
    model: _Name
    base_url: HttpUrl | None = None
    api_key_env: str | None = None
    fallbacks: list[str] = []


class SelectionPolicy(_Frozen):
    """How to find a profile's model in the fleet, keyed by the profile's name.

    `prefer` is tried in order (exact or contained model name); `"*"` ends it and hands over
    to "best candidate of the type". `provider` and `constraints` are carried to callers;
    selection itself does not interpret them.
    """

    required_type: RequiredType = "llm"
    prefer: list[_Name] = []
    provider: str | None = None
    fallback_profile: str | None = None
    constraints: dict[str, Any] = {}


class AgentConfig(_Frozen):
    default_llm: str | None = None
    fallback_llm: str | None = None


class HardDefault(_Frozen):
    """The last resort when nothing else resolves; `None` in `SelectionConfig` disables it."""

    provider: _Name = "ollama"
    model: _Name = "llama3.2:3b"
    base_url: HttpUrl | None = None


class SelectionConfig(_Frozen):
    llm_profiles: dict[str, LlmProfile] = {}
    selection_policies: dict[str, SelectionPolicy] = {}
    agents: dict[str, AgentConfig] = {}
    default_profile: str | None = None
    # Off unless configured: a caller naming a model must not silently get another one.
    hard_default: HardDefault | None = None
    cloud_providers: frozenset[str] = DEFAULT_CLOUD_PROVIDERS

    @model_validator(mode="after")
    def _profile_references_exist(self) -> SelectionConfig:
        """Names that point at profiles must exist; a `cloud_llm` policy needs a cloud profile."""
        references: list[tuple[str, str | None]] = [("default_profile", self.default_profile)]
        for name, policy in self.selection_policies.items():
            references.append((f"selection_policies.{name}", name))
            references.append(
                (f"selection_policies.{name}.fallback_profile", policy.fallback_profile)
            )
        for agent_id, agent in self.agents.items():
            references.append((f"agents.{agent_id}.default_llm", agent.default_llm))
            references.append((f"agents.{agent_id}.fallback_llm", agent.fallback_llm))
        known = sorted(self.llm_profiles)
        for field, profile in references:
            if profile is not None and profile not in self.llm_profiles:
                raise ValueError(
                    f"{field}: no llm_profiles entry named {profile!r} (known: {known})"
                )
        for name, policy in self.selection_policies.items():
            provider = self.llm_profiles[name].provider
            if policy.required_type == "cloud_llm" and provider not in self.cloud_providers:
                raise ValueError(
                    f"selection_policies.{name}.required_type: cloud_llm needs a cloud "
                    f"provider, the profile's is {provider!r}"
                )
        return self

    def is_cloud(self, profile: LlmProfile) -> bool:
        return profile.provider in self.cloud_providers
