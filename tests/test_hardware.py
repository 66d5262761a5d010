"""GPU facts: parsed from nvidia-smi's CSV by table; read from a real child process.

This machine has no GPU, so the process side runs small stand-in `nvidia-smi`
executables on a PATH made for the test: absent, answering, failing and hanging.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from node_worker.hardware import NVIDIA_SMI_ARGS, parse_nvidia_smi, read_hardware
from services.capabilities import Gpu, Hardware


@pytest.mark.parametrize(
    ("csv_text", "gpus"),
    [
        pytest.param("", (), id="empty"),
        pytest.param(
            "NVIDIA GeForce RTX 4090, 24564, 1021, 3\n",
            (
                Gpu(
                    name="NVIDIA GeForce RTX 4090",
                    memory_total_mb=24564,
                    memory_used_mb=1021,
                    utilization_pct=3,
                ),
            ),
            id="one-gpu",
        ),
        pytest.param(
            "NVIDIA A100-SXM4-80GB, 81920, 0, 0\nNVIDIA A100-SXM4-80GB, 81920, 40960, 100\n",
            (
                Gpu(
                    name="NVIDIA A100-SXM4-80GB",
                    memory_total_mb=81920,
                    memory_used_mb=0,
                    utilization_pct=0,
                ),
                Gpu(
                    name="NVIDIA A100-SXM4-80GB",
                    memory_total_mb=81920,
                    memory_used_mb=40960,
                    utilization_pct=100,
                ),
            ),
            id="two-gpus-in-index-order",
        ),
        pytest.param(
            "NVIDIA GH200 480GB, [N/A], [N/A], 12\n",
            (Gpu(name="NVIDIA GH200 480GB", utilization_pct=12),),
            id="na-memory-is-unknown",
        ),
        pytest.param(
            "Quadro K620, 2048, 512, [Not Supported]\n",
            (Gpu(name="Quadro K620", memory_total_mb=2048, memory_used_mb=512),),
            id="not-supported-utilization-is-unknown",
        ),
        pytest.param(
            "Tesla T4,15360,0,0\r\n",
            (Gpu(name="Tesla T4", memory_total_mb=15360, memory_used_mb=0, utilization_pct=0),),
            id="no-spaces-and-crlf",
        ),
        pytest.param(
            "Some Vendor, Model X, 8192, 100, 5\n",
            (
                Gpu(
                    name="Some Vendor, Model X",
                    memory_total_mb=8192,
                    memory_used_mb=100,
                    utilization_pct=5,
                ),
            ),
            id="comma-in-name-stays-in-name",
        ),
        pytest.param(
            "\nNVIDIA L4, 23034, 1, 0\n\n",
            (Gpu(name="NVIDIA L4", memory_total_mb=23034, memory_used_mb=1, utilization_pct=0),),
            id="blank-lines-skipped",
        ),
        pytest.param(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
            (),
            id="driver-error-text-is-no-gpu",
        ),
        pytest.param("No devices were found\n", (), id="no-devices"),
        pytest.param(", 1, 2, 3\n", (), id="nameless-row-skipped"),
    ],
)
def test_nvidia_smi_csv_becomes_gpus(csv_text: str, gpus: tuple[Gpu, ...]) -> None:
    assert parse_nvidia_smi(csv_text) == Hardware(gpus=gpus)


def test_the_query_asks_for_what_the_parser_reads() -> None:
    assert NVIDIA_SMI_ARGS == (
        "--query-gpu=name,memory.total,memory.used,utilization.gpu",
        "--format=csv,noheader,nounits",
    )


def fake_nvidia_smi(directory: Path, script: str) -> Path:
    """An executable `nvidia-smi` in `directory` running a /bin/sh script."""
    directory.mkdir(exist_ok=True)
    path = directory / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_no_nvidia_smi_means_no_hardware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    assert await read_hardware() is None


async def test_gpus_are_read_from_nvidia_smi_with_the_query_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args_file = tmp_path / "args"
    fake_nvidia_smi(
        tmp_path / "bin",
        f'echo "$@" > {args_file}\necho "NVIDIA GeForce RTX 3090, 24576, 300, [N/A]"',
    )
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    hardware = await read_hardware()

    assert hardware == Hardware(
        gpus=(Gpu(name="NVIDIA GeForce RTX 3090", memory_total_mb=24576, memory_used_mb=300),)
    )
    assert args_file.read_text().split() == list(NVIDIA_SMI_ARGS)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            'echo "NVIDIA-SMI has failed because it could not communicate with the driver"\nexit 9',
            id="driver-down",
        ),
        pytest.param('echo "No devices were found"\nexit 6', id="no-devices"),
        pytest.param("exit 0", id="says-nothing"),
        pytest.param('echo "NVIDIA L4, 23034, 1, 0"\nexit 1', id="rows-but-failed"),
    ],
)
async def test_a_failing_nvidia_smi_means_no_hardware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str
) -> None:
    fake_nvidia_smi(tmp_path / "bin", script)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    assert await read_hardware() is None


async def test_a_hanging_nvidia_smi_is_killed_and_means_no_hardware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    pid_file = tmp_path / "pid"
    fake_nvidia_smi(tmp_path / "bin", f"echo $$ > {pid_file}\nexec {sleep} 60")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    assert await read_hardware(timeout_s=0.5) is None
    assert not alive(int(pid_file.read_text()))
