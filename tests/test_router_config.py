"""The router's configuration as an operator writes it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from router.config import load_router_settings

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
        ("http: [\n", "not valid YAML"),
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
