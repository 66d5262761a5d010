"""What every process's configuration shares: a file (TOML or YAML) plus `INFERBUS_*`
environment overrides, validated at start with the failing field named."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
import yaml
from pydantic import BeforeValidator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


def _url_list(value: Any) -> Any:
    """One URL, a comma-separated list (handy in env vars), or a list."""
    if isinstance(value, str):
        return [url.strip() for url in value.split(",") if url.strip()]
    return value


NatsUrls = Annotated[list[str], NoDecode, BeforeValidator(_url_list)]


class FileSettings(BaseSettings):
    """Settings whose file arrives as init arguments; the environment wins over it."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


S = TypeVar("S", bound=BaseSettings)


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's values: TOML for .toml, YAML otherwise."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "YAML"
        raise ConfigError(f"config {path} is not valid {kind}: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must be a mapping of settings")
    return values


def load_settings(cls: type[S], path: Path | None, **overrides: Any) -> S:
    """Read the file (if any), apply env and `overrides`; raise ConfigError."""
    values = read_config_file(path) if path is not None else {}
    values.update(overrides)
    try:
        return cls(**values)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source=str(path or "settings"))) from exc


def describe_validation_error(exc: pydantic.ValidationError, *, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or "(root)"
        lines.append(f"  {field}: {error['msg']}")
    return "\n".join(lines)
