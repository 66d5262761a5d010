"""What a message on a job's reply inbox means, and what the end of a wait means: pure.

`read_reply` classifies one message that arrived on the inbox of a pending job (the NATS
edge, router/serving/node_link.py, has already checked that the inbox is that job's and
that its node token is the asked node's):

| message                                             | meaning                         |
|-----------------------------------------------------|---------------------------------|
| no body, status 503                                 | `NoWorker`: nobody listens      |
| the job's answer (a JobResponse with its id)        | `Answered`                      |
| a chunk of the job's stream (streaming only)        | `Chunked`                       |
| unreadable, naming no job                           | `Answered`: INTERNAL, the node's|
| unreadable but naming a job, another job's answer   | `Foreign`: dropped, counted     |
|   or chunk, a chunk when the answer is whole        |                                 |

An unreadable message naming no job can only come from a party that got the job (the
inbox is unguessable and, with the committed permissions, only the asked node may reply
on it), so it is that node's INTERNAL fault at once, not a silent wait to the budget.
One carrying a wrong job id is a forgery or a stray: dropped.

`wait_limit` is how long the next wait on the inbox may be; `expired` says what it means
when that wait ran out: the caller's budget (DEADLINE_EXCEEDED, neutral) or a shorter cap
of the router's own (the node's fault: BACKEND_UNAVAILABLE, next node).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.errors import ErrorCode, InferbusError
from services.wire import Chunk, JobResponse, decode_response

__all__ = [
    "NO_RESPONDERS",
    "Answered",
    "Chunked",
    "Foreign",
    "NoWorker",
    "Reply",
    "Waits",
    "expired",
    "read_reply",
    "wait_limit",
]

NO_RESPONDERS = "503"  # the NATS server's status when no subscriber took the request


@dataclass(frozen=True, slots=True)
class Answered:
    response: JobResponse


@dataclass(frozen=True, slots=True)
class Chunked:
    chunk: Chunk


@dataclass(frozen=True, slots=True)
class NoWorker:
    error: InferbusError


@dataclass(frozen=True, slots=True)
class Foreign:
    job_id: str  # the id it carries ("" when it carries none that could be read)


Reply = Answered | Chunked | NoWorker | Foreign


def read_reply(
    data: bytes, status: str | None, *, job_id: str, node: str, streaming: bool
) -> Reply:
    """What one message on job `job_id`'s inbox means (module docstring's table).

    Args:
        data: the message's body.
        status: its `Status` header (None without headers).
        streaming: whether the job was sent as a stream (chunks are expected).
    """
    if not data and status == NO_RESPONDERS:
        return NoWorker(InferbusError(ErrorCode.BACKEND_UNAVAILABLE, f"no worker on node {node}"))
    event = _event_of(data) if streaming else decode_response(data)
    if isinstance(event, JobResponse) and not event.job_id and not _names_a_job(data):
        event = event.model_copy(update={"job_id": job_id})
    if event.job_id != job_id:
        return Foreign(event.job_id)
    if isinstance(event, JobResponse):
        return Answered(event)
    return Chunked(event)


@dataclass(frozen=True, slots=True)
class Waits:
    """How long one attempt may wait, on the loop's clock."""

    total_s: float  # the whole attempt
    budget_bound: bool  # `total_s` is the caller's remaining budget (not a cap of ours)
    first_token_s: float | None = None  # streams: until the first piece
    idle_s: float | None = None  # streams: between two pieces


def wait_limit(waits: Waits, left_s: float, *, streaming: bool, delivered: int) -> float:
    """How long the next wait may be, with `left_s` of the attempt left: a stream waits
    at most the first-token time for its first piece, the idle time between pieces."""
    if not streaming:
        return left_s
    step = waits.first_token_s if delivered == 0 else waits.idle_s
    return min(left_s, step) if step is not None else left_s


def expired(waits: Waits, limit_s: float, left_s: float, node: str) -> tuple[InferbusError, bool]:
    """What a wait of `limit_s` running out means, with `left_s` of the attempt left:
    the error, and whether the caller's budget was the binding limit."""
    bound = waits.budget_bound and limit_s >= left_s
    what = "the job's budget" if bound else f"{limit_s * 1000:.0f} ms"
    code = ErrorCode.DEADLINE_EXCEEDED if bound else ErrorCode.BACKEND_UNAVAILABLE
    return InferbusError(code, f"no answer from {node} within {what}"), bound


def _names_a_job(data: bytes) -> bool:
    """Whether a message carries a job id at all (one that is wrong is a forgery: dropped)."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("job_id"), str)


def _event_of(data: bytes) -> Chunk | JobResponse:
    """A chunk (it has `seq` and `delta`), else the final answer."""
    if b'"seq"' not in data:  # no chunk: the final answer, read without a failed try
        return decode_response(data)
    try:
        return Chunk.model_validate_json(data)
    except ValueError:
        return decode_response(data)
