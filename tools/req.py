"""`inferbus req`: send one job by hand, like `nats req`, for people without the NATS CLI.

Lenient: a bare node id means its llm subject (`--type embed`: its embed subject), and
text that is not JSON becomes `{"prompt": text}` (`{"input": text}` for embed).
Prints the reply; exits non-zero when the reply is an error.
"""

from __future__ import annotations

import asyncio
import json
import sys

import nats
from nats.aio.client import Client as NatsClient

from services.bus import BusUnreachable, connect_once
from services.errors import InferbusError
from services.streaming import StreamLimits, request_stream
from services.subjects import NODE_ID_PATTERN, Subjects
from services.wire import (
    Chunk,
    JobResponse,
    JobType,
    decode_response,
    encode,
    request_from_fields,
)


def job_subject(target: str, job_type: JobType, subjects: Subjects) -> str:
    """`gpu-a` → `node.gpu-a.llm.request`; a full subject is used as given."""
    return subjects.job(target, job_type) if NODE_ID_PATTERN.fullmatch(target) else target


def job_payload(text: str, job_type: JobType = "llm") -> bytes:
    """JSON objects go as they are; anything else is a prompt (an embed job's input)."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return text.encode()
    return json.dumps({"input" if job_type == "embed" else "prompt": text}).encode()


async def send(
    *,
    nats_url: str,
    subject: str,
    payload: bytes,
    timeout_s: float,
    raw: bool,
    stream: bool = False,
) -> int:
    try:
        nc = await connect_once(nats_url)
    except BusUnreachable as error:
        print(error, file=sys.stderr)
        return 2
    if stream:
        try:
            return await _print_stream(nc, subject, payload, timeout_s)
        finally:
            await nc.close()
    try:
        try:
            msg = await nc.request(subject, payload, timeout=timeout_s)
        except nats.errors.NoRespondersError:
            print(f"no worker listens on {subject}", file=sys.stderr)
            return 3
        except nats.errors.TimeoutError:
            print(f"no reply on {subject} within {timeout_s:g} s", file=sys.stderr)
            return 4
    finally:
        await nc.close()
    response = decode_response(msg.data)
    return _report(response, raw=raw, msg_data=msg.data)


def _report(response: JobResponse, *, raw: bool, msg_data: bytes | None = None) -> int:
    result = response.result
    if raw or result is None:
        print(msg_data.decode(errors="replace") if msg_data else encode(response).decode())
    elif result.tool_calls or result.embeddings is not None:
        # No text to show: the calls or the vectors are the answer.
        shown = result.model_dump(include={"text", "tool_calls", "embeddings"}, exclude_none=True)
        print(json.dumps(shown))
    else:
        print(result.text)
    if response.result is not None:
        print(
            f"-- {response.node_id} {response.runtime}/{response.model} "
            f"{response.timings.total_ms:.0f} ms"
            f"{' (cached)' if response.cached else ''}",
            file=sys.stderr,
        )
    return 0 if response.status == "ok" else 1


async def _print_stream(nc: NatsClient, subject: str, payload: bytes, timeout_s: float) -> int:
    """Print tokens as they come; the final answer's error (if any) on stderr."""
    job = request_from_fields(json.loads(payload))
    if isinstance(job, InferbusError):
        print(f"{job.code}: {job.message}", file=sys.stderr)
        return 1
    deadline = asyncio.get_running_loop().time() + timeout_s
    limits = StreamLimits(first_token_s=timeout_s, idle_s=timeout_s, deadline_s=deadline)
    async for event, failure in request_stream(nc, subject, job, limits):
        if isinstance(event, Chunk):
            print(event.delta, end="", flush=True)
            continue
        print()
        if failure is not None and failure.no_responders:
            print(f"no worker listens on {subject}", file=sys.stderr)
            return 3
        if event.error is not None:
            print(f"{event.error.code}: {event.error.message}", file=sys.stderr)
            return 1
        return 0
    return 1
