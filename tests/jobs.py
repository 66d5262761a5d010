"""Sending jobs over NATS from tests, as an operator's `nats req` would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient

from services.streaming import StreamLimits, request_stream
from services.wire import Chunk, JobRequest, JobResponse, decode_response


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


async def stream(
    nc: NatsClient, subject: str, job: dict[str, Any], *, first_s: float = 10, idle_s: float = 10
) -> tuple[list[Chunk], JobResponse]:
    """Send a streamed job by hand; its chunks in order and its final answer."""
    deadline = asyncio.get_running_loop().time() + 30
    chunks: list[Chunk] = []
    async for event, _ in request_stream(
        nc, subject, JobRequest.model_validate(job), StreamLimits(first_s, idle_s, deadline)
    ):
        if isinstance(event, JobResponse):
            return chunks, event
        chunks.append(event)
    raise AssertionError("the stream ended without a final answer")
