"""The router's configuration as an operator writes it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from router.config import config_warnings, load_router_settings
from services.localnet import free_port

ROOT = Path(__file__).resolve().parent.parent

SMALLEST = """
nats_url: nats://127.0.0.1:4222
http: {host: 127.0.0.1, port: 8090}
local_node: gpu-a                                        # optional
local_runtime: {kind: ollama, url: http://127.0.0.1:11434}  # optional
"""


def test_the_smallest_config_works(tmp_path: Path) -> None:
    path = tmp_path / "router.yml"
    path.write_text(SMALLEST)
    settings = load_router_settings(path)
    assert settings.local_node == "gpu-a"
    assert settings.local_runtime is not None
    assert settings.http.port == 8090
    assert settings.selection.llm_profiles == {}


def test_the_example_config_is_valid() -> None:
    settings = load_router_settings(ROOT / "ops" / "router.example.yml")
    assert settings.selection.default_profile == "local_default_coder"
    assert settings.selection.agents["helper"].fallback_llm == "cloud_gpt"
    assert settings.breakers.failures_to_open == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("http: {port: 99999}\n", "http.port"),
        ("local_node: 'gpu a'\n", "local_node"),
        ("offload: {attempts: 0}\n", "offload.attempts"),
        ("agents: {a: {default_llm: ghost}}\n", "ghost"),
        ("bogus: 1\n", "bogus"),
        ("http: [\n", "router.yml:2:1: not valid YAML"),
        ('key: "open\n', "router.yml:2:1: not valid YAML: found unexpected end of stream"),
        ("llm_profiles: {p: {model: m, base_url: 'ftp://x'}}\n", "llm_profiles.p.base_url"),
        ("hard_default: {base_url: 'localhost:11434'}\n", "hard_default.base_url"),
        ("offload: {default_budget_ms: 18014398509481984}\n", "offload.default_budget_ms"),
        ("idempotency: {ttl_s: 1.0e+10}\n", "idempotency.ttl_s"),
    ],
)
async def test_bad_config_exits_non_zero_naming_the_field(
    tmp_path: Path, body: str, field: str
) -> None:
    path = tmp_path / "router.yml"
    path.write_text(body)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        "--config",
        str(path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert field in stderr.decode()
    assert "Traceback" not in stderr.decode()


@pytest.mark.parametrize(
    ("body", "warnings"),
    [
        ("fallbacks: [gpt-4o-mini]\n", ["fallbacks[0]: 'gpt-4o-mini' is claimed by no provider"]),
        (
            "providers: {openai: {base_url: 'https://api.openai.com/v1',\n"
            "                     models: [gpt-4o-mini, gpt-4o]}}\n"
            "fallbacks: [gpt-4o-mini, openai/gpt-4o, ghost]\n"
            "llm_profiles: {p: {model: m, fallbacks: [gpt-4o-mini, phantom]}}\n",
            [
                "fallbacks[2]: 'ghost' is claimed by no provider",
                "llm_profiles.p.fallbacks[1]: 'phantom' is claimed by no provider",
            ],
        ),
        ("nats_url: nats://127.0.0.1:4222\n", []),
    ],
)
def test_a_fallback_no_provider_claims_is_named_at_start(
    tmp_path: Path, body: str, warnings: list[str]
) -> None:
    path = tmp_path / "router.yml"
    path.write_text(body)
    said = config_warnings(load_router_settings(path))
    assert [line.split(", so")[0] for line in said] == warnings


async def test_the_router_logs_unclaimed_fallbacks_as_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "router.yml"
    path.write_text(
        f"nats_url: nats://127.0.0.1:{free_port()}\n"
        f"http: {{host: 127.0.0.1, port: {free_port()}}}\n"
        "fallbacks: [ghost]\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "--config", str(path),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    warning: dict[str, str] = {}
    try:
        async with asyncio.timeout(30):
            while b"router listening" not in (line := await process.stderr.readline()):
                assert line, "the router exited"
                if b"fallbacks[0]" in line:
                    warning = json.loads(line)
                    break
    finally:
        process.terminate()
        await process.wait()
    assert warning["level"] == "warning"
    assert warning["msg"].startswith("fallbacks[0]: 'ghost' is claimed by no provider")
