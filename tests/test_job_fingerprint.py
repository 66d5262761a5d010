"""A job's fingerprint worked out late (node_worker.idempotency.JobFingerprint) says what
JobRequest.fingerprint says, whether it kept the job's bytes or its value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from node_worker.idempotency import KEEP_JOB_BYTES, JobFingerprint
from services.wire import JobRequest, decode_request

BIG = "x" * (2 * KEEP_JOB_BYTES)


def fingerprint_of(fields: dict[str, Any], *, kept: bool) -> JobFingerprint:
    data = json.dumps(fields).encode()
    request = decode_request(data, default_type="llm")
    assert isinstance(request, JobRequest)
    found = JobFingerprint(request, data, "llm")
    return found.kept() if kept else found


CASES = [
    ({"prompt": "hi"}, {"prompt": "hi"}, True),
    ({"prompt": "hi"}, {"messages": [{"role": "user", "content": "hi"}]}, True),
    ({"prompt": "hi"}, {"prompt": "hi", "stream": True, "model": "other"}, True),
    ({"prompt": "hi"}, {"prompt": "ho"}, False),
    ({"prompt": "hi"}, {"prompt": "hi", "params": {"max_tokens": 3}}, False),
    ({"prompt": "hi"}, {"prompt": "hi", "type": "code"}, False),
    ({"prompt": BIG}, {"prompt": BIG, "job_id": "another"}, True),
    ({"prompt": BIG}, {"prompt": BIG + "y"}, False),
]


@pytest.mark.parametrize(("first", "second", "same"), CASES)
@pytest.mark.parametrize("kept", [False, True])
def test_a_late_fingerprint_says_what_the_job_s_fingerprint_says(
    first: dict[str, Any], second: dict[str, Any], same: bool, kept: bool
) -> None:
    a, b = fingerprint_of(first, kept=kept), fingerprint_of(second, kept=False)
    assert (a == b) is same
    expected = JobRequest.model_validate({**first, "type": first.get("type", "llm")})
    assert a.value == expected.fingerprint()
