"""When a broken stream goes on on another node, and the job that continues it: tables."""

from __future__ import annotations

from typing import Any

import pytest

from router.attempts.resume import StreamSoFar, continuing_job, may_resume
from services.wire import JobRequest
from services.wire_features import ToolCallDelta

CHAT = JobRequest.model_validate({"messages": [{"role": "user", "content": "story"}]})
ON = 2  # resumes allowed


def so_far(*pieces: Any, resumes: int = 0) -> StreamSoFar:
    state = StreamSoFar(resumes=resumes)
    for piece in pieces:
        state.took(piece)
    return state


TOOL_PIECE = [ToolCallDelta.model_validate({"index": 0, "function": {"arguments": "{"}})]


@pytest.mark.parametrize(
    ("state", "node_fault", "settings", "opted_out", "job", "resumes"),
    [
        (so_far("Once", " upon"), True, ON, False, CHAT, True),
        (so_far(), True, ON, False, CHAT, False),  # nothing delivered: a plain retry
        (so_far("Once"), False, ON, False, CHAT, False),  # the caller's, the budget's
        (so_far("Once"), True, 0, False, CHAT, False),
        (so_far("Once"), True, ON, True, CHAT, False),  # x-inferbus-resume: off
        (so_far("Once", TOOL_PIECE), True, ON, False, CHAT, False),  # a call half-sent
        (so_far("Once", resumes=2), True, ON, False, CHAT, False),  # attempts used up
        (so_far("Once", resumes=1), True, ON, False, CHAT, True),
        (
            so_far("0.1"),
            True,
            ON,
            False,
            JobRequest.model_validate({"type": "embed", "input": "x"}),
            False,
        ),
    ],
)
def test_a_stream_resumes_only_for_the_nodes_own_fault_within_its_bounds(
    state: StreamSoFar,
    node_fault: bool,
    settings: int,
    opted_out: bool,
    job: JobRequest,
    resumes: bool,
) -> None:
    allowed = 0 if opted_out else settings
    verdict = may_resume(state, node_fault=node_fault, allowed=allowed, job=job)
    assert verdict is resumes


def test_a_chat_continues_with_the_text_so_far_as_the_assistants_prefill() -> None:
    resumed = continuing_job(CHAT, "Once upon", 1)
    assert resumed.continue_final is True
    assert [(m.role, m.content) for m in resumed.messages or []] == [
        ("user", "story"),
        ("assistant", "Once upon"),
    ]
    assert CHAT.continue_final is None  # the call's own job is untouched


def test_a_prompt_job_becomes_messages_and_a_callers_own_prefill_is_extended() -> None:
    prompt = continuing_job(JobRequest.model_validate({"prompt": "story"}), "Once", 1)
    assert [(m.role, m.content) for m in prompt.messages or []] == [
        ("user", "story"),
        ("assistant", "Once"),
    ]
    assert prompt.prompt is None
    own = JobRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "story"},
                {"role": "assistant", "content": "Once"},
            ],
            "continue_final": True,
        }
    )
    extended = continuing_job(own, " upon", 1)
    assert [(m.role, m.content) for m in extended.messages or []] == [
        ("user", "story"),
        ("assistant", "Once upon"),
    ]


def test_a_raw_prompt_continues_by_appending_the_text() -> None:
    raw = JobRequest.model_validate({"prompt": "def f(", "raw": True})
    assert continuing_job(raw, "x):", 1).prompt == "def f(x):"
