"""What every process's configuration shares: a file (TOML or YAML) plus `INFERBUS_*`
environment overrides, validated at start with the failing field named."""

from __future__ import annotations

import re
import ssl
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


def _url_list(value: Any) -> Any:
    """One URL, a comma-separated list (handy in env vars), or a list."""
    if isinstance(value, str):
        return [url.strip() for url in value.split(",") if url.strip()]
    return value


NatsUrls = Annotated[list[str], NoDecode, BeforeValidator(_url_list)]


def _http_url(value: str) -> str:
    """An http(s) URL with a host; the value is not repeated (it may carry a password)."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"must be an http:// or https:// URL, not {scheme}")
    if not parts.hostname or any(character.isspace() for character in value):
        raise ValueError("must be an http:// or https:// URL with a host and no spaces")
    return value


# Where an HTTP client will be sent: checked at start, so a typo fails there and not on
# every request that reaches it.
HttpUrl = Annotated[str, AfterValidator(_http_url)]


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
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error(path, exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must be a mapping of settings")
    return values


_TOML_AT = re.compile(r"^(?P<what>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")


def _toml_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """`file:line:column: not valid TOML: what`, as editors and compilers say it."""
    found = _TOML_AT.match(str(exc))
    if found is None:
        return f"{path}: not valid TOML: {exc}"
    return f"{path}:{found['line']}:{found['column']}: not valid TOML: {found['what']}"


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """`file:line:column: not valid YAML: what`, with where the broken construct began."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"{path}: not valid YAML: {exc}"
    mark = exc.problem_mark
    what = exc.problem or "cannot be read"
    if exc.context and exc.context_mark is not None:
        began = exc.context_mark
        what += f" ({exc.context} at line {began.line + 1}, column {began.column + 1})"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {what}"


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


class NatsAuth(BaseModel):
    """How a process proves who it is to NATS, and TLS. All optional; set at most one of
    user/password, token, nkey seed file, creds file. Secrets can come from the
    environment: INFERBUS_NATS__PASSWORD, INFERBUS_NATS__TOKEN."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @model_validator(mode="after")
    def _one_way_in(self) -> NatsAuth:
        ways = [self.user is not None, self.token is not None, self.nkey_seed_file, self.creds_file]
        if sum(bool(way) for way in ways) > 1:
            raise ValueError("set only one of user/password, token, nkey_seed_file, creds_file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> NatsAuth:
        """The `INFERBUS_NATS__*` variables, for one-shot commands (`inferbus req`, `nodes`)."""
        prefix = "INFERBUS_NATS__"
        return cls.model_validate(
            {
                name[len(prefix) :].lower(): value
                for name, value in environ.items()
                if name.startswith(prefix) and name[len(prefix) :].lower() in cls.model_fields
            }
        )

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options["user"] = self.user
            if self.password is not None:
                options["password"] = self.password.get_secret_value()
        if self.token is not None:
            options["token"] = self.token.get_secret_value()
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.nkey_seed_file)
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        if self.tls_ca_file or self.tls_cert_file:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file else None
            )
            if self.tls_cert_file and self.tls_key_file:
                context.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file))
            options["tls"] = context
        return options
