"""The answer of a request no target answered, as a table: what happened in, one answer out."""

from __future__ import annotations

import pytest

from router.attempts.unanswered import Unanswered, final_failure
from services.errors import ErrorCode, InferbusError
from services.wire import JobResponse

BUSY, MNF, BACKEND = ErrorCode.BUSY, ErrorCode.MODEL_NOT_FOUND, ErrorCode.BACKEND_ERROR
CLOUD = JobResponse.failure(
    "j", InferbusError(ErrorCode.NO_ROUTE, "every key and model of the chain is cooling")
)
LACKING = InferbusError(ErrorCode.BAD_REQUEST, "tools: model 'm' does not support tools")


@pytest.mark.parametrize(
    ("facts", "code", "message", "retry_after_ms"),
    [
        pytest.param(
            Unanswered("j", "m", outcomes=(BACKEND,), conclusive=CLOUD, budget_left_s=-1),
            ErrorCode.NO_ROUTE, "cooling", None, id="a-conclusive-failure-says-most",
        ),
        pytest.param(
            Unanswered("j", "m", outcomes=(BUSY,), retry_after_ms=(200,), budget_left_s=0),
            ErrorCode.DEADLINE_EXCEEDED, "the budget ran out before an answer", None,
            id="the-budget-ran-out",
        ),
        pytest.param(
            Unanswered("j", "m", outcomes=(BUSY, BUSY), retry_after_ms=(3000, 500)),
            ErrorCode.BUSY, "every node that serves it is busy (2 tried)", 500,
            id="all-busy-the-smallest-retry-after",
        ),
        pytest.param(
            Unanswered("j", "m", lacking=LACKING),
            ErrorCode.BAD_REQUEST, "does not support tools", None,
            id="only-what-the-job-needs-is-missing",
        ),
        pytest.param(
            Unanswered("j", "m"), MNF, "nothing serves m", None, id="nothing-serves-the-model",
        ),
        pytest.param(
            Unanswered("j", "m", outcomes=(MNF, MNF)), MNF, "nothing serves m", None,
            id="every-node-said-the-model-is-not-there",
        ),
        pytest.param(
            Unanswered("j", "m", outcomes=(BUSY, BACKEND), retry_after_ms=(100,)),
            ErrorCode.NO_ROUTE, "m — nothing could serve it (last attempt: BACKEND_ERROR)", None,
            id="mixed-failures-name-the-last",
        ),
        pytest.param(
            Unanswered("j", "m", outcomes=(BUSY, MNF), retry_after_ms=(100,)),
            ErrorCode.NO_ROUTE, "(last attempt: MODEL_NOT_FOUND)", None,
            id="busy-then-missing-is-no-route",
        ),
        pytest.param(
            Unanswered("j", "llm", connected=False),
            ErrorCode.NO_ROUTE, "llm — the router is not connected to NATS", None,
            id="nats-down-and-nothing-else-serves-it",
        ),
        pytest.param(
            Unanswered("j", "m", skipped_open=True),
            ErrorCode.NO_ROUTE, "m — nothing serves it", None,
            id="open-breakers-stood-in-the-way",
        ),
        pytest.param(
            Unanswered("j", "m", outcomes=("rate_limited",)),
            ErrorCode.NO_ROUTE, "(last attempt: rate_limited)", None,
            id="a-cloud-reason-as-the-last-outcome",
        ),
    ],
)  # fmt: skip
def test_the_final_failure(
    facts: Unanswered, code: ErrorCode, message: str, retry_after_ms: int | None
) -> None:
    answer = final_failure(facts)
    assert answer.error is not None
    assert answer.job_id == "j"
    assert answer.error.code == code
    assert message in answer.error.message
    assert answer.error.retry_after_ms == retry_after_ms


@pytest.mark.parametrize(
    ("facts", "asks"),
    [
        (Unanswered("j", "m"), True),
        (Unanswered("j", "m", outcomes=(BUSY,)), False),  # something was attempted
        (Unanswered("j", "m", skipped_open=True), False),  # a breaker stood in the way
        (Unanswered("j", "m", connected=False), False),  # the bus did
        (Unanswered("j", "m", conclusive=CLOUD), False),  # the cloud's answer says more
        (Unanswered("j", "m", budget_left_s=0), False),  # the budget's end does
    ],
)
def test_what_the_job_lacks_is_looked_up_only_when_it_decides(
    facts: Unanswered, asks: bool
) -> None:
    assert facts.asks_what_is_lacking is asks
