"""GPU facts for the capabilities record, read from `nvidia-smi` when the node has it.

Best effort by design: a node without NVIDIA tools, with a driver that does not answer,
or with a tool that hangs still serves jobs, so every failure here ends as None (logged
at debug) and the record simply carries no hardware. Nothing is invented: a value the
tool cannot read ("[N/A]", "[Not Supported]") stays None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil

from services.capabilities import Gpu, Hardware

log = logging.getLogger("inferbus.worker.hardware")

QUERY_FIELDS = ("name", "memory.total", "memory.used", "utilization.gpu")
NVIDIA_SMI_ARGS = (
    f"--query-gpu={','.join(QUERY_FIELDS)}",
    "--format=csv,noheader,nounits",
)


def _number(field: str) -> int | None:
    """`24564` → 24564; `[N/A]`, `[Not Supported]` or anything else unreadable → None."""
    try:
        return int(field)
    except ValueError:
        pass
    try:
        return round(float(field))
    except (ValueError, OverflowError):  # words, nan, inf
        return None


def _gpu(line: str) -> Gpu | None:
    # The name comes first and is the only free text, so split the numbers off the right.
    fields = [field.strip() for field in line.rsplit(",", len(QUERY_FIELDS) - 1)]
    if len(fields) != len(QUERY_FIELDS) or not fields[0]:
        return None
    name, total, used, utilization = fields
    return Gpu(
        name=name,
        memory_total_mb=_number(total),
        memory_used_mb=_number(used),
        utilization_pct=_number(utilization),
    )


def parse_nvidia_smi(csv_text: str) -> Hardware:
    """The GPUs in the output of `nvidia-smi --query-gpu=name,memory.total,memory.used,
    utilization.gpu --format=csv,noheader,nounits`, one line per GPU, e.g.
    `NVIDIA GeForce RTX 4090, 24564, 1021, 3` (MiB, MiB, percent).

    Lines that are not GPU rows (blank lines, driver error text) are skipped.
    """
    gpus = (_gpu(line) for line in csv_text.splitlines() if line.strip())
    return Hardware(gpus=tuple(gpu for gpu in gpus if gpu is not None))


async def read_hardware(timeout_s: float = 2.0) -> Hardware | None:
    """This node's GPUs now, or None when nvidia-smi is absent, fails, hangs past
    `timeout_s` or reports no GPU. Never raises (cancellation aside)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        log.debug("no nvidia-smi on PATH: hardware not reported")
        return None
    try:
        output = await _run(executable, timeout_s)
        hardware = None if output is None else parse_nvidia_smi(output)
    except Exception as error:  # best effort by design: any failure means "not known"
        log.debug("nvidia-smi unreadable: %r", error)
        return None
    if hardware is None:
        return None
    if not hardware.gpus:
        log.debug("nvidia-smi reported no GPU rows")
        return None
    return hardware


async def _run(executable: str, timeout_s: float) -> str | None:
    process = await asyncio.create_subprocess_exec(
        executable,
        *NVIDIA_SMI_ARGS,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:  # timed out or cancelled: do not leave it behind
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.returncode != 0:
        detail = (stderr or stdout).decode(errors="replace").strip()[:200]
        log.debug("nvidia-smi exited %s: %s", process.returncode, detail)
        return None
    return stdout.decode(errors="replace")
