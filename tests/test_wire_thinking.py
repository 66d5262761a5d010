"""The model's reasoning on the wire and in the runtimes' own formats: tables, no I/O."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.runtimes.base import ChatCall, StreamDelta, StreamEnd, StreamEvent
from services.runtimes.forced_tools import ForcedCall, as_forced_stream
from services.runtimes.ollama import _parse_line
from services.runtimes.openai_compat import _SseChunks, reasoning_of
from services.runtimes.openai_features import feature_fields
from services.wire import Chunk, JobRequest, Result, Thinking, Usage, encode, replay_pieces
from services.wire_features import Tool, ToolCall


def test_a_chunk_without_reasoning_is_sent_as_it_always_was() -> None:
    assert json.loads(encode(Chunk(job_id="j", seq=1, delta="hi"))) == {
        "job_id": "j",
        "seq": 1,
        "delta": "hi",
    }


@pytest.mark.parametrize(
    ("chunk", "pieces"),
    [
        ({"delta": "hi"}, ["hi"]),
        ({"thinking": "hmm"}, [Thinking("hmm")]),  # no empty text piece behind it
        ({"thinking": "hmm", "delta": "hi"}, [Thinking("hmm"), "hi"]),
        ({"thinking": ""}, [""]),  # empty: still the one piece that says the stream began
    ],
)
def test_a_chunks_pieces_put_reasoning_first(chunk: dict[str, Any], pieces: list[Any]) -> None:
    assert Chunk.model_validate({"job_id": "j", "seq": 1, **chunk}).pieces() == pieces


def test_an_older_reader_takes_a_chunk_with_reasoning() -> None:
    """Unknown fields are ignored: a router that knows no `thinking` reads its text."""
    raw = {"job_id": "j", "seq": 1, "delta": "", "thinking": "hmm"}
    assert Chunk.model_validate(raw).delta == ""


def test_a_kept_answer_replays_its_reasoning_first() -> None:
    call = ToolCall.model_validate({"id": "c", "function": {"name": "f", "arguments": "{}"}})
    pieces = replay_pieces(Result(text="hi", thinking="hmm", tool_calls=[call]))
    assert pieces[0] == Thinking("hmm")
    assert pieces[-1] == "hi"
    assert replay_pieces(Result(text="hi")) == ["hi"]


@pytest.mark.parametrize(
    ("line", "thinking", "text"),
    [
        ({"message": {"role": "assistant", "content": "", "thinking": "hmm"}}, "hmm", ""),
        ({"message": {"role": "assistant", "content": "hi"}}, "", "hi"),
        ({"response": "", "thinking": "hmm"}, "hmm", ""),  # /api/generate
        ({"response": "hi"}, "", "hi"),
    ],
)
def test_ollama_reasoning_is_read_from_chat_and_generate_lines(
    line: dict[str, Any], thinking: str, text: str
) -> None:
    delta, end = _parse_line(json.dumps({**line, "done": False}), ())
    assert (delta.thinking, delta.text, end) == (thinking, text, None)


@pytest.mark.parametrize(
    ("delta", "thinking"),
    [
        ({"reasoning_content": "hmm"}, "hmm"),  # llama.cpp's server, vLLM, DeepSeek
        ({"reasoning": "hmm"}, "hmm"),  # newer vLLM and others
        ({"content": "hi"}, ""),
        ({"reasoning_content": None, "content": "hi"}, ""),
    ],
)
def test_openai_compatible_reasoning_is_read_under_either_name(
    delta: dict[str, Any], thinking: str
) -> None:
    assert reasoning_of(delta) == thinking
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    read = _SseChunks(()).feed("data: " + json.dumps(chunk))
    assert read is not None
    assert read.thinking == thinking


@pytest.mark.parametrize(
    ("extra", "kwargs"),
    [
        ({"think": True}, {"enable_thinking": True}),
        ({"think": "high"}, {"enable_thinking": True}),
        ({"think": False}, {"enable_thinking": False}),
        (
            {"think": True, "chat_template_kwargs": {"enable_thinking": False}},
            {"enable_thinking": False},
        ),
    ],
)
def test_ollamas_think_reaches_an_openai_compatible_runtime_as_enable_thinking(
    extra: dict[str, Any], kwargs: dict[str, Any]
) -> None:
    job = JobRequest.model_validate({"prompt": "hi", "extra": extra})
    body = feature_fields(ChatCall.of("m", job))
    assert "think" not in body
    assert body["chat_template_kwargs"] == kwargs


async def test_a_forced_calls_stream_keeps_the_reasoning_before_the_call() -> None:
    tool = Tool.model_validate({"type": "function", "function": {"name": "f"}})

    async def events() -> AsyncIterator[StreamEvent]:
        yield StreamDelta("", thinking="hmm")
        yield StreamDelta('{"a": 1}')
        yield StreamEnd("stop", Usage())

    out = [event async for event in as_forced_stream(events(), ForcedCall((tool,)))]
    assert isinstance(out[0], StreamDelta)
    assert out[0].thinking == "hmm"
    assert isinstance(out[1], StreamDelta)
    assert out[1].tool_calls is not None
    assert out[1].tool_calls[0].function.name == "f"
