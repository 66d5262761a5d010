"""The deployment kit — systemd units, Dockerfile, compose stack — checked against the code.

No Docker engine is needed for most of it: the files are parsed and held against the
settings classes and loaders the processes use, so a renamed setting, a wrong port or a
missing mounted file fails here instead of at an operator's first `compose up`. The one
end-to-end test brings the compose stack up with testcontainers, and is skipped when
testcontainers or a Docker engine is missing.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from node_worker.config import WorkerSettings, load_worker_settings
from router.config import RouterSettings, load_router_settings
from services.nats_server import find_nats_server

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SYSTEMD_DIR = ROOT / "ops" / "systemd"
WORKER_UNIT = SYSTEMD_DIR / "inferbus-worker@.service"
ROUTER_UNIT = SYSTEMD_DIR / "inferbus-router.service"
DOCKERFILE = ROOT / "Dockerfile"

EXPECTED_SERVICES = {"nats", "ollama", "worker-a", "worker-b", "router"}
ROLES: dict[str, type[BaseSettings]] = {"worker": WorkerSettings, "router": RouterSettings}
DEFAULT_DRAIN_GRACE_S = float(WorkerSettings.model_fields["drain_grace_s"].default)


# ---------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def _no_inferbus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's own INFERBUS_* variables must not leak into the configs loaded here."""
    for name in list(os.environ):
        if name.upper().startswith("INFERBUS_"):
            monkeypatch.delenv(name)


def settings_env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads (upper case): its prefix plus each
    field, and nested model fields joined with its nested delimiter."""
    config = settings.model_config
    prefix = config.get("env_prefix") or ""
    delimiter = config.get("env_nested_delimiter")
    return _model_env_names(settings, prefix.upper(), delimiter)


def _model_env_names(model: type[BaseModel], prefix: str, delimiter: str | None) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}".upper()
        names.add(key)
        if delimiter:
            for nested in _models_in(field.annotation):
                names |= _model_env_names(nested, f"{key}{delimiter.upper()}", delimiter)
    return names


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """Models a field holds directly (through Optional/Union/Annotated, not inside lists:
    nested env names do not index into lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from _models_in(args[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _models_in(arg)


def api_key_env_names(values: Any) -> set[str]:
    """Names of the variables a config points at with `api_key_env` (runtime/cloud keys)."""
    found: set[str] = set()
    if isinstance(values, dict):
        for key, value in values.items():
            if key == "api_key_env" and isinstance(value, str):
                found.add(value.upper())
            else:
                found |= api_key_env_names(value)
    elif isinstance(values, list):
        for value in values:
            found |= api_key_env_names(value)
    return found


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SYSTEMD_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "us": 1e-6,
    "usec": 1e-6,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_COMPOSE_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str, units: dict[str, float]) -> float:
    """A time span such as systemd's `1min 30s` / `90` or compose's `1m30s` in seconds."""
    text = text.strip().lower()
    if text == "infinity":
        return math.inf
    total, end = 0.0, 0
    for match in _SPAN.finditer(text):
        number, unit = match.groups()
        if text[end : match.start()].strip() or unit not in units:
            raise ValueError(f"cannot read time span {text!r}")
        total += float(number) * units[unit]
        end = match.end()
    if not end or end != len(text):
        raise ValueError(f"cannot read time span {text!r}")
    return total


_NATS_SIZES = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
    "gi": 1024**3,
    "gib": 1024**3,
}


def nats_conf_value(key: str) -> str | None:
    """A top-level `key: value` (or `key = value`) of compose/nats.conf."""
    for line in (COMPOSE_DIR / "nats.conf").read_text().splitlines():
        match = re.match(rf"^{key}\s*[:=]\s*(.+?)\s*(?:#.*)?$", line.strip())
        if match:
            return match.group(1).strip("\"'")
    return None


def nats_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([a-z]*)", text.strip().lower())
    if match is None or match.group(2) not in _NATS_SIZES:
        raise ValueError(f"cannot read NATS size {text!r}")
    return int(match.group(1)) * _NATS_SIZES[match.group(2)]


# ---------------------------------------------------------------------------------------
# compose


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    found = load_compose().get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    return found


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def inferbus_services() -> dict[str, str]:
    """Service name -> role ("worker"/"router") of every service running our image."""
    found: dict[str, str] = {}
    for name, service in services().items():
        if "build" in service:
            command = command_of(service)
            assert command, f"{name}: builds our image but has no command"
            assert command[0] in ROLES, f"{name}: command {command} is no inferbus role"
            found[name] = command[0]
    return found


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's `environment`, list or mapping form; None = passed through from the host."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = [str(item).partition("=") for item in environment]
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {str(k): (None if v is None else str(v)) for k, v in environment.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of a service's bind mounts; named volumes excluded."""
    mounts: list[tuple[str, str]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((str(volume["source"]), str(volume["target"])))
            continue
        source, _, rest = str(volume).partition(":")
        if source.startswith((".", "/", "~")):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def host_path(source: str) -> Path:
    return (COMPOSE_DIR / source).resolve()


def config_path(name: str) -> Path:
    """The host file mounted where the service's `--config` argument points."""
    service = services()[name]
    command = command_of(service)
    assert "--config" in command, f"{name}: no --config in {command}"
    target = command[command.index("--config") + 1]
    sources = [source for source, mounted_at in bind_mounts(service) if mounted_at == target]
    assert sources, f"{name}: nothing is mounted at its --config {target}"
    return host_path(sources[0])


def effective_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> BaseSettings:
    """The settings the service's process would run with: its mounted config through our
    own loader, under the environment the compose file gives it."""
    for key, value in environment_of(services()[name]).items():
        if value is not None and "${" not in value:
            monkeypatch.setenv(key, value)
    path = config_path(name)
    if inferbus_services()[name] == "worker":
        return load_worker_settings(path)
    return load_router_settings(path)


def worker_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    settings = effective_settings(name, monkeypatch)
    assert isinstance(settings, WorkerSettings)
    return settings


def router_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> RouterSettings:
    settings = effective_settings(name, monkeypatch)
    assert isinstance(settings, RouterSettings)
    return settings


def urls_in(values: Any) -> Iterator[str]:
    if isinstance(values, str) and re.match(r"^[a-z]+://", values):
        yield values
    elif isinstance(values, dict):
        for value in values.values():
            yield from urls_in(value)
    elif isinstance(values, list):
        for value in values:
            yield from urls_in(value)


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", "")
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


def workers() -> list[str]:
    return sorted(name for name, role in inferbus_services().items() if role == "worker")


def routers() -> list[str]:
    return sorted(name for name, role in inferbus_services().items() if role == "router")


def test_compose_has_the_stack() -> None:
    found = services()
    assert found.keys() >= EXPECTED_SERVICES
    assert inferbus_services() == {"worker-a": "worker", "worker-b": "worker", "router": "router"}

    nats = found["nats"]
    image, _, tag = str(nats["image"]).partition(":")
    assert image == "nats"
    version = re.match(r"(\d+)\.(\d+)", tag)
    assert version, f"nats image tag {tag!r} pins no version"
    assert (int(version[1]), int(version[2])) >= (2, 10)
    nats_command = command_of(nats)
    assert "-js" in nats_command or "--jetstream" in nats_command
    conf_target = nats_command[nats_command.index("--config") + 1]
    assert ("./nats.conf", conf_target) in bind_mounts(nats)

    assert str(found["ollama"]["image"]).partition(":")[0] == "ollama/ollama"

    for name in workers():
        assert command_of(found[name]) == ["worker", "--config", "/etc/inferbus/worker.toml"]
    assert command_of(found["router"]) == ["router", "--config", "/etc/inferbus/router.yml"]


def test_compose_build_contexts_and_dockerfiles_exist() -> None:
    for name in inferbus_services():
        build = services()[name]["build"]
        context_text, dockerfile = (
            (build, "Dockerfile")
            if isinstance(build, str)
            else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        )
        context = host_path(str(context_text))
        assert context.is_dir(), f"{name}: build context {context} is not a directory"
        assert (context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
        assert (context / dockerfile).resolve() == DOCKERFILE


def test_compose_mounted_files_and_volumes_exist() -> None:
    declared_volumes = set(load_compose().get("volumes") or {})
    for name, service in services().items():
        for source, target in bind_mounts(service):
            assert host_path(source).exists(), f"{name}: mounts missing {source} at {target}"
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                named = volume.partition(":")[0]
                assert named in declared_volumes, f"{name}: volume {named} is not declared"


def test_compose_depends_on_healthy_services_that_have_a_healthcheck() -> None:
    found = services()
    for name, service in found.items():
        depends_on = service.get("depends_on") or {}
        entries = (
            {dep: {"condition": "service_started"} for dep in depends_on}
            if isinstance(depends_on, list)
            else depends_on
        )
        for dep, spec in entries.items():
            assert dep in found, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in found[dep], f"{name} waits for {dep}, never healthy"
    for name in inferbus_services():
        assert "nats" in (found[name].get("depends_on") or {}), f"{name} starts before nats"


@pytest.mark.parametrize("name", ["worker-a", "worker-b", "router"])
def test_compose_configs_load_with_our_loaders(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A ConfigError (naming the field) fails the test: the process would exit 2 at start.
    settings = effective_settings(name, monkeypatch)
    assert isinstance(settings, ROLES[inferbus_services()[name]])


@pytest.mark.parametrize("name", ["worker-a", "worker-b", "router"])
def test_compose_environment_is_read_by_the_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = effective_settings(name, monkeypatch)
    allowed = settings_env_names(type(settings)) | api_key_env_names(settings.model_dump())
    names = {key.upper() for key in environment_of(services()[name])}
    assert names <= allowed, f"{name} sets variables nothing reads: {sorted(names - allowed)}"


def test_settings_env_names_are_derived_from_the_classes() -> None:
    worker = settings_env_names(WorkerSettings)
    assert {"INFERBUS_NODE_ID", "INFERBUS_NATS_URL", "INFERBUS_NATS__PASSWORD"} <= worker
    assert {"INFERBUS_LIMITS__LLM_CONCURRENCY", "INFERBUS_DRAIN_GRACE_S"} <= worker
    router = settings_env_names(RouterSettings)
    assert {"INFERBUS_NATS_URL", "INFERBUS_HTTP__PORT", "INFERBUS_OFFLOAD__ATTEMPTS"} <= router
    assert "INFERBUS_NODE_ID" not in router
    assert "INFERBUS_HTTP__PORTS" not in router


def test_compose_node_ids_are_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    node_ids = []
    for name in workers():
        with monkeypatch.context() as scoped:
            node_ids.append(worker_settings(name, scoped).node_id)
    assert len(set(node_ids)) == len(node_ids) == 2, node_ids


@pytest.mark.parametrize("name", ["worker-a", "worker-b", "router"])
def test_compose_hosts_are_services_and_nats_port_matches(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a container 127.0.0.1 is the container itself: every URL names a service."""
    settings = effective_settings(name, monkeypatch)
    nats_port = int(nats_conf_value("port") or 4222)
    urls = list(urls_in(settings.model_dump(mode="json")))
    assert urls
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        assert host not in {"localhost", "127.0.0.1", "::1", "0.0.0.0"}, f"{name}: {url}"
        if "." not in host:
            assert host in services(), f"{name}: {url} names no compose service"
        if parts.scheme in {"nats", "tls"} and host == "nats":
            assert parts.port == nats_port, f"{name}: {url}, nats listens on {nats_port}"


def test_compose_router_port_is_published_and_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    (name,) = routers()
    settings = router_settings(name, monkeypatch)
    port = settings.http.port
    assert settings.http.host in {"0.0.0.0", "::"}, "the router must listen beyond loopback"
    container_ports = []
    for mapping in services()[name].get("ports", []):
        if isinstance(mapping, dict):
            container_ports.append(int(mapping["target"]))
        else:
            container_ports.append(int(str(mapping).rsplit(":", 1)[-1].split("/")[0]))
    assert port in container_ports, f"router listens on {port}, publishes {container_ports}"
    assert f"127.0.0.1:{port}/ready" in healthcheck_text(services()[name])


def test_compose_router_without_api_keys_is_published_on_loopback_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (name,) = routers()
    settings = router_settings(name, monkeypatch)
    if settings.http.api_keys:
        return
    for mapping in services()[name].get("ports", []):
        host_ip = mapping.get("host_ip") if isinstance(mapping, dict) else None
        if host_ip is None and not isinstance(mapping, dict):
            parts = str(mapping).split(":")
            host_ip = parts[0] if len(parts) == 3 else None
        assert host_ip == "127.0.0.1", f"an open router published beyond loopback: {mapping}"


def test_compose_worker_healthchecks_probe_the_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in workers():
        with monkeypatch.context() as scoped:
            settings = worker_settings(name, scoped)
        assert settings.metrics_port, f"{name}: no metrics_port, nothing to probe"
        assert f"127.0.0.1:{settings.metrics_port}/metrics" in healthcheck_text(services()[name])


def test_compose_stop_grace_outlasts_the_worker_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in workers():
        with monkeypatch.context() as scoped:
            drain = worker_settings(name, scoped).drain_grace_s
        grace = seconds(str(services()[name].get("stop_grace_period", "10s")), _COMPOSE_UNITS)
        assert grace > drain, f"{name}: stop_grace_period {grace}s <= drain_grace_s {drain}s"


def test_compose_nats_takes_the_jobs_workers_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    max_payload = nats_size(nats_conf_value("max_payload") or str(1024**2))
    for name in workers():
        with monkeypatch.context() as scoped:
            accepted = worker_settings(name, scoped).limits.max_request_bytes
        assert max_payload >= accepted, f"{name} accepts {accepted} B, NATS max {max_payload} B"


def test_compose_nats_conf_is_valid_for_nats_server() -> None:
    """The mounted nats.conf, checked by the nats-server binary itself (`-t`)."""
    conf = COMPOSE_DIR / "nats.conf"
    result = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert nats_conf_value("port") == "4222"
    assert nats_conf_value("http_port") == "8222"  # the healthcheck's /healthz
    assert "127.0.0.1:8222/healthz" in healthcheck_text(services()["nats"])


def test_time_span_and_size_parsers() -> None:
    assert seconds("60s", _SYSTEMD_UNITS) == 60
    assert seconds("90", _SYSTEMD_UNITS) == 90
    assert seconds("1min 30s", _SYSTEMD_UNITS) == 90
    assert seconds("1m30s", _COMPOSE_UNITS) == 90
    assert seconds("500ms", _COMPOSE_UNITS) == 0.5
    assert seconds("infinity", _SYSTEMD_UNITS) == math.inf
    assert nats_size("8MB") == 8 * 1024**2
    assert nats_size("8388608") == 8 * 1024**2
    with pytest.raises(ValueError, match="time span"):
        seconds("soon", _SYSTEMD_UNITS)
    with pytest.raises(ValueError, match="time span"):
        seconds("5 fortnights", _SYSTEMD_UNITS)
    with pytest.raises(ValueError, match="NATS size"):
        nats_size("8 parsecs")


# ---------------------------------------------------------------------------------------
# systemd


def read_unit(path: Path) -> configparser.ConfigParser:
    """A unit file as configparser reads it. strict: a key given twice in a section would
    mean something else to systemd (appended or reset) than to configparser (last one
    wins), so our units give each key once and this reading is exactly systemd's."""
    parser = configparser.ConfigParser(
        strict=True,
        interpolation=None,
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        empty_lines_in_values=False,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def env_assignments(value: str) -> dict[str, str]:
    """`Environment=` (space-separated KEY=value words, quotes allowed) as a mapping."""
    return dict(word.partition("=")[::2] for word in shlex.split(value))


@pytest.mark.parametrize(
    ("unit", "role"), [(WORKER_UNIT, "worker"), (ROUTER_UNIT, "router")], ids=["worker", "router"]
)
def test_unit_runs_inferbus_with_a_config_and_stops_gently(unit: Path, role: str) -> None:
    parsed = read_unit(unit)
    service = parsed["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/inferbus/.venv/bin/inferbus"
    assert argv[1] == role
    assert argv[argv.index("--config") + 1].startswith("/etc/inferbus/")

    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] in {"on-failure", "always", "on-abnormal"}
    assert seconds(service["RestartSec"], _SYSTEMD_UNITS) > 0
    assert "StartLimitBurst" in parsed["Unit"]
    assert "StartLimitIntervalSec" in parsed["Unit"]
    assert "TimeoutStopSec" in service
    # Exit 2 = bad config (ConfigError) or arguments: not restarted in a loop.
    assert "2" in service.get("RestartPreventExitStatus", "").split()

    assert service["User"] not in {"root", "0"}
    assert service.get("EnvironmentFile", "").startswith("-/etc/inferbus/")
    assert "network-online.target" in parsed["Unit"]["After"].split()
    assert "network-online.target" in parsed["Unit"]["Wants"].split()
    assert "multi-user.target" in parsed["Install"]["WantedBy"].split()


def test_worker_unit_is_a_template_keyed_by_node_id() -> None:
    service = read_unit(WORKER_UNIT)["Service"]
    assert WORKER_UNIT.name.endswith("@.service")
    assert env_assignments(service["Environment"])["INFERBUS_NODE_ID"] == "%i"
    assert "%i" in service["EnvironmentFile"]
    argv = shlex.split(service["ExecStart"])
    assert "%i" in argv[argv.index("--config") + 1]
    for name in env_assignments(service["Environment"]):
        assert name.upper() in settings_env_names(WorkerSettings) | {"PYTHONUNBUFFERED"}


def test_worker_unit_outlasts_the_drain() -> None:
    """systemd sends SIGKILL after TimeoutStopSec: it must leave the default drain
    (WorkerSettings.drain_grace_s) and the disconnect time to finish."""
    timeout = seconds(read_unit(WORKER_UNIT)["Service"]["TimeoutStopSec"], _SYSTEMD_UNITS)
    assert timeout > DEFAULT_DRAIN_GRACE_S + 5, (timeout, DEFAULT_DRAIN_GRACE_S)


def test_worker_unit_keeps_gpu_access() -> None:
    service = read_unit(WORKER_UNIT)["Service"]
    assert service.get("PrivateDevices", "no").lower() in {"no", "false", "0", "off"}
    assert service.get("DevicePolicy", "auto") == "auto"
    assert "MemoryDenyWriteExecute" not in service


@pytest.mark.parametrize(
    ("example", "settings"),
    [("worker.env.example", WorkerSettings), ("router.env.example", RouterSettings)],
)
def test_env_examples_name_only_variables_the_settings_read(
    example: str, settings: type[BaseSettings]
) -> None:
    """Every INFERBUS_* line, commented out or not, is a variable the process reads."""
    names = []
    for line in (SYSTEMD_DIR / example).read_text().splitlines():
        match = re.match(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", line)
        if match:
            names.append(match.group(1))
            assert not line.lstrip("#").startswith("export "), line
    inferbus = {name.upper() for name in names if name.upper().startswith("INFERBUS_")}
    assert inferbus, f"{example} shows no INFERBUS_ variable"
    unknown = inferbus - settings_env_names(settings)
    assert not unknown, f"{example} names variables nothing reads: {sorted(unknown)}"


# ---------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rules, simplified: a pattern excludes a path and everything
    under it, `**/` matches any depth, `!` re-includes, the last match wins."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        variants = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            ignored = not negate
    return ignored


def test_dockerfile_is_slim_python_non_root_with_inferbus_entrypoint() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert bases[-1:] == ["python:3.11-slim"]
    stage = final_stage()
    entrypoint = [args for keyword, args in stage if keyword == "ENTRYPOINT"]
    assert entrypoint, "no ENTRYPOINT in the final stage"
    assert json.loads(entrypoint[-1]) == ["inferbus"]  # exec form: inferbus is PID 1
    users = [args.split(":")[0] for keyword, args in stage if keyword == "USER"]
    assert users, "the final stage runs as root"
    assert users[-1] not in {"root", "0"}
    stop = [args for keyword, args in stage if keyword == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])


def test_dockerfile_installs_runtime_dependencies_only() -> None:
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    assert any(re.search(r"\bpip install\b", run) for run in runs)
    for run in runs:
        assert not re.search(r"\[[^\]]*\bdev\b[^\]]*\]", run), f"dev extras installed: {run}"
        assert "llama" not in run.lower(), f"llama-cpp-python must not be built: {run}"
        assert not re.search(r"\b(pytest|mypy|ruff)\b", run), run


def test_dockerfile_copies_what_the_distribution_is_built_from() -> None:
    """Every COPY source exists and survives .dockerignore; the pyproject's readme and
    packages are among them (setuptools needs both to build the wheel)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    copied: set[str] = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        if arguments.startswith("--from") or " --from" in f" {arguments}":
            continue
        for source in words[:-1]:
            source = source.removeprefix("./").rstrip("/")
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source, patterns), f"COPY {source}: .dockerignore drops it"
            copied.add(source)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "inferbus" in project["project"]["scripts"]
    needed = {str(project["project"]["readme"]), "pyproject.toml"}
    needed |= {
        package.rstrip("*").rstrip(".")
        for package in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"
    for heavy in (".git", ".venv", "tests"):
        assert dockerignored(heavy, patterns), f".dockerignore lets {heavy} into the context"


def test_dockerignore_rules() -> None:
    patterns = ["**/__pycache__", "tests", "*.egg-info", "docs", "!docs/keep.md"]
    assert dockerignored("__pycache__", patterns)
    assert dockerignored("services/__pycache__/x.pyc", patterns)
    assert dockerignored("tests/test_x.py", patterns)
    assert dockerignored("inferbus.egg-info", patterns)
    assert not dockerignored("docs/keep.md", patterns)
    assert not dockerignored("services/bus.py", patterns)


# ---------------------------------------------------------------------------------------
# end to end, where a Docker engine exists

SKIP_REASON = "the compose stack runs with `pip install testcontainers` and a running Docker engine"


def docker_engine() -> str | None:
    """None when a Docker engine answers, else why not. Never raises."""
    try:
        docker = importlib.import_module("docker")
    except ImportError:
        docker = None
    if docker is not None:
        try:
            client = docker.from_env(timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as error:
            return f"the Docker engine does not answer ({type(error).__name__})"
        return None
    executable = shutil.which("docker")
    if executable is None:
        return "no docker client on PATH"
    try:
        result = subprocess.run([executable, "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`docker info` failed ({type(error).__name__})"
    return None if result.returncode == 0 else f"`docker info` exited {result.returncode}"


def compose_stack_unavailable() -> str | None:
    if importlib.util.find_spec("testcontainers") is None:
        return f"{SKIP_REASON}: testcontainers is not installed"
    why = docker_engine()
    return None if why is None else f"{SKIP_REASON}: {why}"


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as error:
            last = error
        else:
            if last:
                return last
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout_s}s; last: {last!r}")


@pytest.mark.timeout(1800)  # first run: builds the image, pulls nats and ollama
def test_compose_stack_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = compose_stack_unavailable()
    if reason is not None:
        pytest.skip(reason)
    compose = importlib.import_module("testcontainers.compose")
    port = router_settings("router", monkeypatch).http.port
    stack = compose.DockerCompose(
        str(COMPOSE_DIR), compose_file_name="docker-compose.yml", build=True, wait=True
    )
    with stack, httpx.Client(timeout=30) as client:
        host = stack.get_service_host("router", port)
        published = stack.get_service_port("router", port)
        base = f"http://{host}:{published}"

        wait_for(lambda: client.get(f"{base}/ready").status_code == 200, 120, "router ready")

        def both_nodes() -> bool:
            nodes = client.get(f"{base}/nodes").json()["nodes"]
            return {"worker-a", "worker-b"} <= {node["node_id"] for node in nodes}

        wait_for(both_nodes, 90, "both workers announced")

        # Exactly one answer within the budget, whatever Ollama has pulled: a result, or a
        # structured error, with the route the router took.
        answer = client.post(f"{base}/infer", json={"prompt": "Say hi", "timeout_ms": 20_000})
        body = answer.json()
        assert body["status"] in {"ok", "error"}, body
        assert "route" in body, body
