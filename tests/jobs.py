"""Sending jobs over NATS from tests, as an operator's `nats req` would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient

from services.wire import JobResponse, decode_response


async def ask(
    nc: NatsClient, subject: str, job: dict[str, Any] | bytes, timeout_s: float = 10
) -> JobResponse:
    data = job if isinstance(job, bytes) else json.dumps(job).encode()
    msg = await nc.request(subject, data, timeout=timeout_s)
    return decode_response(msg.data)


def llm(node_id: str) -> str:
    return f"node.{node_id}.llm.request"


def vision(node_id: str) -> str:
    return f"node.{node_id}.vision.request"


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (bounded) for something another process or task makes true."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)
