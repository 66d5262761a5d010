"""When a broken stream goes on on another node, and the job that continues it: tables."""

from __future__ import annotations

from typing import Any

import pytest

from router.attempts.resume import (
    StreamSoFar,
    attempt_usages,
    caller_allows_resume,
    continuing_job,
    may_resume,
    whole_answer,
)
from services.wire import JobRequest, Result, Thinking, Usage
from services.wire_features import ToolCallDelta

CHAT = JobRequest.model_validate({"messages": [{"role": "user", "content": "story"}]})
ON = 2  # resumes allowed
CAPPED_AT_2 = JobRequest.model_validate(
    {"messages": [{"role": "user", "content": "story"}], "max_tokens": 2}
)
TEMPLATED = JobRequest.model_validate(
    {"messages": [{"role": "user", "content": "story"}], "extra": {"template": "{{ .Prompt }}"}}
)


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
        (so_far(Thinking("hmm"), Thinking(" so")), True, ON, False, CHAT, False),  # thinking
        (so_far(Thinking("hmm"), ""), True, ON, False, CHAT, False),  # no text yet
        (so_far(Thinking("hmm"), "Once"), True, ON, False, CHAT, True),  # the answer began
        (
            so_far("0.1"),
            True,
            ON,
            False,
            JobRequest.model_validate({"type": "embed", "input": "x"}),
            False,
        ),
        (so_far("Once"), True, ON, False, TEMPLATED, False),  # renders one prompt only
        (so_far("Once", " upon"), True, ON, False, CAPPED_AT_2, False),  # the cap is reached
        (so_far("Once"), True, ON, False, CAPPED_AT_2, True),  # one token left
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
    resumed = continuing_job(CHAT, "Once upon", 1, 2)
    assert resumed.continue_final is True
    assert [(m.role, m.content) for m in resumed.messages or []] == [
        ("user", "story"),
        ("assistant", "Once upon"),
    ]
    assert CHAT.continue_final is None  # the call's own job is untouched


def test_a_prompt_job_becomes_messages_and_a_callers_own_prefill_is_extended() -> None:
    prompt = continuing_job(JobRequest.model_validate({"prompt": "story"}), "Once", 1, 1)
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
    extended = continuing_job(own, " upon", 1, 1)
    assert [(m.role, m.content) for m in extended.messages or []] == [
        ("user", "story"),
        ("assistant", "Once upon"),
    ]


def test_a_raw_prompt_continues_by_appending_the_text() -> None:
    raw = JobRequest.model_validate({"prompt": "def f(", "raw": True})
    assert continuing_job(raw, "x):", 1, 2).prompt == "def f(x):"


@pytest.mark.parametrize(
    ("fields", "pieces_so_far", "cap"),
    [
        ({}, 50, None),  # no cap: none on the continuation either
        ({"max_tokens": 200}, 50, 150),
        ({"max_completion_tokens": 120, "max_tokens": 300}, 20, 100),  # the smaller cap
        ({"max_tokens": 50}, 50, 1),  # all of it delivered: never a cap of 0
    ],
)
def test_the_continuation_may_generate_only_what_is_left_of_the_callers_cap(
    fields: dict[str, Any], pieces_so_far: int, cap: int | None
) -> None:
    for job in (
        JobRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **fields}),
        JobRequest.model_validate({"prompt": "def f(", "raw": True, **fields}),
    ):
        continued = continuing_job(job, "Once", 1, pieces_so_far)
        assert continued.params.max_tokens == cap
        assert continued.params.max_completion_tokens is None


@pytest.mark.parametrize(
    ("header", "stream_options", "allowed"),
    [
        (None, None, True),
        ("off", None, False),
        (" OFF ", None, False),
        ("false", None, False),
        ("on", None, True),
        (None, {"include_usage": True}, True),
        (None, {"resume": False}, False),
        (None, {"resume": True}, True),
        ("on", {"resume": False}, False),
        (None, "not an object", True),
    ],
)
def test_a_caller_refuses_resume_by_header_or_stream_options(
    header: str | None, stream_options: Any, allowed: bool
) -> None:
    assert caller_allows_resume(header, stream_options) is allowed


@pytest.mark.parametrize(
    ("answering", "breaks", "each"),
    [
        # broken after 50 pieces; the answering node was sent the question (10) + 50
        ((60, 150), [50], [(10, 50), (60, 150)]),
        # broken twice: after 50, then after 120 in all (70 more from the second node)
        ((130, 80), [50, 120], [(10, 50), (60, 70), (130, 80)]),
        ((5, 10), [50], [(0, 50), (5, 10)]),  # a prompt reported shorter: never below 0
    ],
)
def test_every_attempt_of_a_resumed_stream_is_counted(
    answering: tuple[int, int], breaks: list[int], each: list[tuple[int, int]]
) -> None:
    final = Usage(prompt_tokens=answering[0], completion_tokens=answering[1])
    usages = attempt_usages(final, breaks)
    assert [(u.prompt_tokens, u.completion_tokens) for u in usages] == each


def test_the_whole_answer_is_the_text_so_far_and_the_continuation_with_usage_summed() -> None:
    state = so_far("Once", " upon")
    state.resumed()
    state.took(" a")
    result = Result(text=" a time", usage=Usage(prompt_tokens=12, completion_tokens=2))
    whole, usages = whole_answer(result, state)
    assert whole.text == "Once upon a time"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (10 + 12, 2 + 2)
    assert [(u.prompt_tokens, u.completion_tokens) for u in usages] == [(10, 2), (12, 2)]


async def test_after_a_resume_the_continuing_nodes_reasoning_is_not_relayed() -> None:
    """The client has the reasoning already: a second line of thought would repeat it."""
    sent: list[Any] = []

    async def client(piece: Any) -> None:
        sent.append(piece)

    state = StreamSoFar()
    relay = state.relay(client)
    await relay(Thinking("hmm"))
    await relay("Once")
    state.resumed()
    await relay(Thinking("again"))
    await relay(" upon")
    assert sent == [Thinking("hmm"), "Once", " upon"]
    whole, _ = whole_answer(Result(text=" upon", thinking="again"), state)
    assert whole.text == "Once upon"
    assert whole.thinking == "hmm"
