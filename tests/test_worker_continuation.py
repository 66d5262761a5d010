"""Continuing an answer: a job whose last message is the assistant's text so far
(`continue_final`) gets exactly the rest, on every runtime that can continue; a runtime
that cannot refuses it by name and its node does not list the `continue` feature."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from services.capabilities import decode_capabilities
from services.errors import ErrorCode, InferbusError
from services.needs import WIRE_FEATURES, node_wire_features
from services.runtimes.base import ChatCall
from services.runtimes.llamacpp import PrefillEcho, without_prefill_echo
from services.runtimes.openai_features import continuation_fields
from services.wire import JobRequest, Message
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, stream
from tools.simulator import LlamaServerTraits, SimModel, Simulator, expected_tokens
from tools.simulator.plan import continued_from

MODEL = "llama3:8b"
QUESTION = "tell me a long story"
TOKENS = 40


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(models=[SimModel(MODEL)], tokens=TOKENS) as simulator:
        yield simulator


def continuing(so_far: str, **more: Any) -> dict[str, Any]:
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": so_far},
    ]
    return {"model": MODEL, "messages": messages, "continue_final": True, **more}


@pytest.mark.parametrize(
    ("pieces", "prefill", "held"),
    [
        (("a", " b", " c"), "", 0),
        (("a", " b", " c"), "a", 1),
        (("a", " b", " c"), "a b", 2),
        (("a", " b", " c"), "a b c", 3),
        (("a", " b", " c"), "a b c d", 0),  # longer than the answer: start over
        (("a", " b", " c"), "a x", 0),  # not a prefix
        (("a", " b", " c"), "a ", 0),  # not on a piece boundary
    ],
)
def test_the_simulator_knows_how_much_of_its_answer_a_prefill_holds(
    pieces: tuple[str, ...], prefill: str, held: int
) -> None:
    assert continued_from(pieces, prefill) == held


@pytest.mark.parametrize(
    ("kinds", "continues"),
    [
        ((), True),
        (("ollama",), True),
        (("ollama", "llamacpp", "vllm"), True),
        (("ollama", "lmstudio"), False),
        (("openai",), False),
    ],
)
def test_a_node_lists_continue_only_when_every_runtime_can(
    kinds: tuple[str, ...], continues: bool
) -> None:
    features = node_wire_features(kinds)
    assert ("continue" in features) is continues
    assert set(WIRE_FEATURES) - set(features) <= {"continue"}


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("vllm", {"continue_final_message": True, "add_generation_prompt": False}),
        ("llamacpp", {}),
        ("lmstudio", None),
        ("openai", None),
    ],
)
def test_each_openai_compatible_server_is_told_to_continue_its_own_way(
    kind: Any, fields: dict[str, Any] | None
) -> None:
    call = ChatCall(MODEL, [Message(role="assistant", content="so far")], continue_final=True)
    if fields is None:
        with pytest.raises(InferbusError) as refused:
            continuation_fields(call, kind)
        assert refused.value.code is ErrorCode.BAD_REQUEST
        assert refused.value.message.startswith("continue_final:")
    else:
        assert continuation_fields(call, kind) == fields


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
            }
        ],
    ],
)
def test_continue_final_needs_a_final_assistant_text(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError, match="continue_final"):
        JobRequest.model_validate({"messages": messages, "continue_final": True})


@pytest.mark.parametrize("kind", ["ollama", "vllm", "llamacpp", "llama-server"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_continued_answer_is_exactly_the_rest(
    nc: NatsClient,
    sim: Simulator,
    start_worker: WorkerFactory,
    node_id: str,
    kind: str,
    streamed: bool,
) -> None:
    """`llama-server`: llama.cpp's own server, which echoes the prefill in front of the
    continuation (the simulator does as the real one does): the worker takes it off."""
    whole = expected_tokens(MODEL, QUESTION, TOKENS)
    so_far = "".join(whole[:15])
    async with contextlib.AsyncExitStack() as stack:
        if kind == "llama-server":
            traits = LlamaServerTraits(total_slots=4)
            sim = await stack.enter_async_context(
                Simulator(models=[SimModel(MODEL)], tokens=TOKENS, llama_server=traits)
            )
            kind = "llamacpp"
        await stack.enter_async_context(start_worker(backends=[backend(sim.url, kind=kind)]))
        job = continuing(so_far, stream=streamed)
        if streamed:
            chunks, answer = await stream(nc, llm(node_id), job)
            assert "".join(chunk.delta for chunk in chunks) == "".join(whole[15:])
        else:
            answer = await ask(nc, llm(node_id), job)
    assert answer.status == "ok", answer.error
    assert answer.result is not None
    assert answer.result.text == "".join(whole[15:])
    assert answer.result.usage.completion_tokens == TOKENS - 15
    assert answer.result.finish_reason == "stop"


@pytest.mark.parametrize(("kind", "continues"), [("ollama", True), ("lmstudio", False)])
async def test_the_record_says_whether_the_node_can_continue_and_a_node_that_cannot_refuses(
    nc: NatsClient,
    sim: Simulator,
    start_worker: WorkerFactory,
    node_id: str,
    kind: str,
    continues: bool,
) -> None:
    async with start_worker(backends=[backend(sim.url, kind=kind)]):
        answer = await ask(nc, llm(node_id), continuing("Once"))
        reply = await nc.request(f"node.{node_id}.caps", b"", timeout=5)
    caps = decode_capabilities(reply.data)
    assert caps is not None
    assert ("continue" in caps.wire_features) is continues
    if continues:
        assert answer.status == "ok", answer.error
        return
    assert answer.error is not None
    assert answer.error.code is ErrorCode.BAD_REQUEST
    assert answer.error.message.startswith("continue_final:")


@pytest.mark.parametrize(
    ("prefill", "deltas", "relayed"),
    [
        ("Once upon", ["Once upon a", " time"], ["", " a", " time"]),  # llama-server's echo
        ("Once upon", ["Once", " upon", " a"], ["", "", " a"]),  # the echo over pieces
        ("Once upon", [" a", " time"], [" a", " time"]),  # a server that does not echo
        ("Once upon", ["Once", " more"], ["", "Once more"]),  # looked like it, was not
        ("Once upon", ["Once"], ["", "Once"]),  # ended inside the echo: all of it kept
        ("", ["Once"], ["Once"]),
    ],
)
def test_an_echoed_prefill_is_taken_off_the_continuation(
    prefill: str, deltas: list[str], relayed: list[str]
) -> None:
    echo = PrefillEcho(prefill)
    out = [echo.feed(delta) for delta in deltas]
    held = echo.flush()
    assert [piece for piece in [*out, held] if piece] == [p for p in relayed if p]
    assert without_prefill_echo("".join(deltas), prefill) == "".join(relayed)
