"""What a message on a job's inbox means, and what the end of a wait means, as tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.serving.replies import (
    Answered,
    Chunked,
    Foreign,
    NoWorker,
    Reply,
    Waits,
    expired,
    read_reply,
    wait_limit,
)
from services.errors import ErrorCode

JOB = "job-1"


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


ANSWER = body({"job_id": JOB, "status": "ok", "result": {"text": "hi"}})
FAILED = body({"job_id": JOB, "status": "error", "error": {"code": "BUSY", "message": "full"}})
CHUNK = body({"job_id": JOB, "seq": 1, "delta": "h"})
OTHERS_ANSWER = ANSWER.replace(b"job-1", b"job-2")
OTHERS_CHUNK = CHUNK.replace(b"job-1", b"job-2")
NAMING_THE_JOB = body({"job_id": JOB, "junk": 1})
GONE, INTERNAL = ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.INTERNAL


@pytest.mark.parametrize(
    ("data", "status", "streaming", "kind", "detail"),
    [
        pytest.param(b"", "503", False, NoWorker, GONE, id="no-responders"),
        pytest.param(b"", "503", True, NoWorker, GONE, id="no-responders-to-a-stream"),
        pytest.param(ANSWER, None, False, Answered, None, id="the-answer"),
        pytest.param(FAILED, None, False, Answered, ErrorCode.BUSY, id="a-typed-error"),
        pytest.param(ANSWER, None, True, Answered, None, id="the-answer-ends-a-stream"),
        pytest.param(CHUNK, None, True, Chunked, None, id="a-chunk-of-the-stream"),
        pytest.param(b"garbage", None, False, Answered, INTERNAL, id="unreadable-naming-no-job"),
        pytest.param(b"garbage", None, True, Answered, INTERNAL, id="unreadable-in-a-stream"),
        pytest.param(b"", "408", False, Answered, INTERNAL, id="empty-with-another-status"),
        pytest.param(body([1, 2]), None, False, Answered, INTERNAL, id="not-an-object"),
        pytest.param(OTHERS_ANSWER, None, False, Foreign, "job-2", id="another-jobs-answer"),
        pytest.param(OTHERS_CHUNK, None, True, Foreign, "job-2", id="another-jobs-chunk"),
        pytest.param(NAMING_THE_JOB, None, False, Foreign, "", id="unreadable-naming-a-job"),
        pytest.param(CHUNK, None, False, Foreign, "", id="a-chunk-while-whole"),
    ],
)
def test_a_message_on_the_jobs_inbox(
    data: bytes, status: str | None, streaming: bool, kind: type[Reply], detail: object
) -> None:
    reply = read_reply(data, status, job_id=JOB, node="gpu1", streaming=streaming)
    assert isinstance(reply, kind)
    if isinstance(reply, NoWorker):
        assert reply.error.code == detail
        assert "gpu1" in reply.error.message
    elif isinstance(reply, Answered):
        assert reply.response.job_id == JOB
        assert (reply.response.error.code if reply.response.error else None) == detail
    elif isinstance(reply, Foreign):
        assert reply.job_id == detail
    else:
        assert isinstance(reply, Chunked)
        assert reply.chunk.delta == "h"


WAITS = Waits(total_s=10, budget_bound=True, first_token_s=2, idle_s=1)


@pytest.mark.parametrize(
    ("waits", "left_s", "streaming", "delivered", "limit_s"),
    [
        (WAITS, 9.0, False, 0, 9.0),  # a whole answer waits for what is left
        (WAITS, 9.0, True, 0, 2.0),  # a stream: the first token's time
        (WAITS, 9.0, True, 3, 1.0),  # then the idle time between pieces
        (WAITS, 0.5, True, 0, 0.5),  # never past the attempt's end
        (Waits(total_s=10, budget_bound=True), 9.0, True, 0, 9.0),  # no stream limits set
    ],
)
def test_how_long_the_next_wait_may_be(
    waits: Waits, left_s: float, streaming: bool, delivered: int, limit_s: float
) -> None:
    assert wait_limit(waits, left_s, streaming=streaming, delivered=delivered) == limit_s


@pytest.mark.parametrize(
    ("budget_bound", "limit_s", "left_s", "code", "bound", "says"),
    [
        (True, 3.0, 3.0, ErrorCode.DEADLINE_EXCEEDED, True, "within the job's budget"),
        (True, 0.0, -0.1, ErrorCode.DEADLINE_EXCEEDED, True, "within the job's budget"),
        (True, 2.0, 5.0, ErrorCode.BACKEND_UNAVAILABLE, False, "within 2000 ms"),  # first token
        (False, 4.0, 4.0, ErrorCode.BACKEND_UNAVAILABLE, False, "within 4000 ms"),  # our cap
    ],
)
def test_what_a_wait_running_out_means(
    budget_bound: bool, limit_s: float, left_s: float, code: ErrorCode, bound: bool, says: str
) -> None:
    waits = Waits(total_s=5, budget_bound=budget_bound)
    error, was_bound = expired(waits, limit_s, left_s, "gpu1")
    assert (error.code, was_bound) == (code, bound)
    assert f"no answer from gpu1 {says}" == error.message
