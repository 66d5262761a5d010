"""Cloud providers as operators write them: validation naming the field, keys never shown."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from router.cloud.providers import (
    CloudModel,
    ProviderConfig,
    ProviderConfigError,
    ProviderKey,
    resolve_cloud_model,
    resolve_keys,
)
from router.config import RouterSettings, load_router_settings
from services.settings import ConfigError

TWO_PROVIDERS = """
providers:
  openai:
    base_url: https://api.openai.com/v1
    api_keys: [OPENAI_KEY_A, OPENAI_KEY_B]
    models: [gpt-4o-mini, gpt-4o]
    aliases: {fast: gpt-4o-mini}
    pricing: {gpt-4o-mini: {input_per_1m: 0.15, output_per_1m: 0.6}}
  openrouter:
    base_url: https://openrouter.ai/api/v1
    api_keys: [OPENROUTER_KEY]
fallbacks: [gpt-4o-mini, openrouter/meta-llama/llama-3.1-8b-instruct]
failover: {cooldown_min_s: 2, transient_retries: 1}
llm_profiles:
  cloud_fast: {provider: openai, model: fast, fallbacks: [gpt-4o]}
"""

SECRET = "sk-live-0123456789abcdefSECRET"


def test_two_providers_three_keys_and_a_chain_load(tmp_path: Path) -> None:
    path = tmp_path / "router.yml"
    path.write_text(TWO_PROVIDERS)
    settings = load_router_settings(path)
    assert list(settings.providers) == ["openai", "openrouter"]
    assert settings.providers["openai"].api_keys == ["OPENAI_KEY_A", "OPENAI_KEY_B"]
    assert settings.fallbacks[1] == "openrouter/meta-llama/llama-3.1-8b-instruct"
    assert settings.failover.cooldown_min_s == 2
    assert settings.selection.llm_profiles["cloud_fast"].fallbacks == ["gpt-4o"]
    price = settings.providers["openai"].price_of("gpt-4o-mini")
    assert price is not None
    assert price.cost(1_000_000, 1_000_000) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("providers", "field"),
    [
        ({"p": {"api_keys": ["K"]}}, "providers.p.base_url"),
        ({"p": {"base_url": "ftp://x"}}, "providers.p.base_url"),
        ({"p": {"base_url": "https://x", "kind": "bedrock"}}, "providers.p.kind"),
        ({"p": {"base_url": "https://x", "api_keys": ["A", "A"]}}, "listed twice"),
        ({"p": {"base_url": "https://x", "api_keys": ["my key"]}}, "providers.p.api_keys.0"),
        (
            {"p": {"base_url": "https://x", "models": ["a"], "aliases": {"b": "c"}}},
            "aliases.b",
        ),
        (
            {"p": {"base_url": "https://x", "models": ["a"], "pricing": {"z": {}}}},
            "pricing.z",
        ),
        ({"a/b": {"base_url": "https://x"}}, "providers.a/b"),
        ({"p": {"base_url": "https://x", "bogus": 1}}, "providers.p.bogus"),
    ],
)
def test_bad_provider_config_names_the_field(providers: dict[str, object], field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        RouterSettings(providers=providers)
    assert field in str(caught.value)


def test_a_profile_naming_a_provider_must_name_a_model_it_serves() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"llm_profiles\.p\.model"):
        RouterSettings.model_validate(
            {
                "providers": {"openai": {"base_url": "https://x", "models": ["gpt-4o"]}},
                "llm_profiles": {"p": {"provider": "openai", "model": "gpt-3.5"}},
            }
        )
    settings = RouterSettings.model_validate(
        {
            "providers": {"openai": {"base_url": "https://x", "aliases": {"f": "gpt-4o"}}},
            "llm_profiles": {"p": {"provider": "openai", "model": "anything"}},  # no allow-list
        }
    )
    assert settings.selection.llm_profiles["p"].model == "anything"


def test_a_key_pasted_instead_of_its_variable_name_is_refused_without_echoing_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.yml"
    path.write_text(f"providers: {{p: {{base_url: 'https://x', api_keys: ['{SECRET}']}}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_router_settings(path)
    assert "providers.p.api_keys.0" in str(caught.value)
    assert "not the key itself" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.__cause__)
    assert SECRET not in str(caught.value.__cause__)


def test_keys_are_read_from_the_environment_in_rotation_order() -> None:
    provider = ProviderConfig(base_url="https://x", api_keys=["KEY_A", "KEY_B"])
    keys = resolve_keys("p", provider, {"KEY_B": "b-secret", "KEY_A": "a-secret"})
    assert [key.key_id for key in keys] == ["KEY_A", "KEY_B"]
    assert [key.secret for key in keys] == ["a-secret", "b-secret"]


def test_an_unset_key_variable_fails_naming_the_field_and_the_variable() -> None:
    provider = ProviderConfig(base_url="https://x", api_keys=["KEY_A", "KEY_B"])
    with pytest.raises(ProviderConfigError, match=r"providers\.p\.api_keys\[1\].*KEY_B"):
        resolve_keys("p", provider, {"KEY_A": "a"})


def test_a_keyless_provider_has_one_keyless_entry() -> None:
    keys = resolve_keys("local", ProviderConfig(base_url="http://127.0.0.1:11434"), {})
    assert [(key.key_id, key.secret) for key in keys] == [("#0", "")]


def test_a_key_never_shows_in_its_repr_or_str() -> None:
    key = ProviderKey("OPENAI_KEY_A", SECRET)
    assert SECRET not in repr(key)
    assert SECRET not in str(key)
    assert SECRET not in f"{key} {[key]} {(key,)!r}"
    assert "OPENAI_KEY_A" in repr(key)


PROVIDERS = {
    "openai": ProviderConfig(
        base_url="https://api.openai.com/v1",
        models=["gpt-4o-mini", "gpt-4o"],
        aliases={"fast": "gpt-4o-mini"},
    ),
    "openrouter": ProviderConfig(base_url="https://openrouter.ai/api/v1"),
    "backup": ProviderConfig(base_url="https://backup/v1", models=["gpt-4o"]),
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-4o", CloudModel("openai", "gpt-4o", "gpt-4o")),  # first claimant wins
        ("fast", CloudModel("openai", "gpt-4o-mini", "fast")),
        ("openai/fast", CloudModel("openai", "gpt-4o-mini", "openai/fast")),
        ("backup/gpt-4o", CloudModel("backup", "gpt-4o", "backup/gpt-4o")),
        (
            "openrouter/meta-llama/llama-3.1-8b-instruct",
            CloudModel(
                "openrouter",
                "meta-llama/llama-3.1-8b-instruct",
                "openrouter/meta-llama/llama-3.1-8b-instruct",
            ),
        ),
        ("openai/gpt-3.5", None),  # not in the allow-list
        ("llama3:8b", None),  # a fleet model: no provider claims it
        ("meta-llama/llama-3.1-8b-instruct", None),  # no allow-list: only the prefixed form
    ],
)
def test_chain_entries_resolve_to_a_provider_and_its_model_id(
    name: str, expected: CloudModel | None
) -> None:
    assert resolve_cloud_model(name, PROVIDERS) == expected
