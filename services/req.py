"""`inferbus req`: send one job by hand, like `nats req`, for people without the NATS CLI.

Lenient: a bare node id means its llm subject, and text that is not JSON becomes
`{"prompt": text}`. Prints the reply; exits non-zero when the reply is an error.
"""

from __future__ import annotations

import json
import sys

import nats

from services.bus import BusUnreachable, connect_once
from services.subjects import NODE_ID_PATTERN, Subjects
from services.wire import JobType, decode_response


def job_subject(target: str, job_type: JobType, subjects: Subjects) -> str:
    """`gpu-a` → `node.gpu-a.llm.request`; a full subject is used as given."""
    return subjects.job(target, job_type) if NODE_ID_PATTERN.fullmatch(target) else target


def job_payload(text: str) -> bytes:
    """JSON objects go as they are; anything else is a prompt."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return text.encode()
    return json.dumps({"prompt": text}).encode()


async def send(*, nats_url: str, subject: str, payload: bytes, timeout_s: float, raw: bool) -> int:
    try:
        nc = await connect_once(nats_url)
    except BusUnreachable as error:
        print(error, file=sys.stderr)
        return 2
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
    if raw or response.result is None:
        print(msg.data.decode(errors="replace"))
    else:
        print(response.result.text)
        print(
            f"-- {response.node_id} {response.runtime}/{response.model} "
            f"{response.timings.total_ms:.0f} ms"
            f"{' (cached)' if response.cached else ''}",
            file=sys.stderr,
        )
    return 0 if response.status == "ok" else 1
