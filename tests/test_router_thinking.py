"""A thinking model's reasoning reaches the client, in every dialect, whole and streamed.

Two workers in front of the simulator: gpu-a speaks Ollama's wire format (`think`,
`message.thinking`), gpu-b OpenAI's as vLLM does (`chat_template_kwargs.enable_thinking`,
`reasoning_content`), each serving a model that thinks when asked. Every flow runs with
the official client of its dialect against a model of each node; a request that does not
ask to think, or a model that cannot, gets no reasoning at all.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any, cast

import anthropic
import httpx
import ollama
import openai
import pytest

from node_worker.config import WorkerSettings
from node_worker.worker import Worker
from router.config import RouterSettings
from router.service import RouterService
from services.nats_server import NatsServer
from tools.simulator import SimModel, Simulator, expected_text, expected_thinking

TOKENS = 6
THINKS_A = "qwen3:4b"  # on the Ollama wire: its /api/show says `thinking`
THINKS_B = "deepseek-r1:7b"  # on the OpenAI wire: its name says it thinks
PLAIN = "llama3.2:3b"  # on both: cannot think
QUESTION = "why is the sky blue"
BOTH_WIRES = pytest.mark.parametrize("model", [THINKS_A, THINKS_B])
ENABLE_THINKING: Any = {"chat_template_kwargs": {"enable_thinking": True}}
THINKING_ON: Any = {"type": "enabled", "budget_tokens": 1024}


@pytest.fixture(scope="module")
async def router_url(nats_server: NatsServer) -> AsyncIterator[str]:
    suffix = uuid.uuid4().hex[:8]
    async with AsyncExitStack() as stack:
        sim_a = await stack.enter_async_context(
            Simulator(
                models=[SimModel(THINKS_A, family="qwen3", thinking=True), SimModel(PLAIN)],
                tokens=TOKENS,
            )
        )
        sim_b = await stack.enter_async_context(
            Simulator(models=[SimModel(THINKS_B, thinking=True), SimModel(PLAIN)], tokens=TOKENS)
        )
        for node, kind, sim in (
            (f"gpu-a-{suffix}", "ollama", sim_a),
            (f"gpu-b-{suffix}", "vllm", sim_b),
        ):
            settings = WorkerSettings(
                node_id=node, nats_url=[nats_server.url], backends=[{"kind": kind, "url": sim.url}]
            )
            await stack.enter_async_context(Worker(settings))
        router = await stack.enter_async_context(
            RouterService(
                RouterSettings(nats_url=[nats_server.url], http={"host": "127.0.0.1", "port": 0})
            )
        )
        yield router.url


def user(text: str = QUESTION) -> list[Any]:
    return [{"role": "user", "content": text}]


@BOTH_WIRES
async def test_ollama_chat_returns_the_thinking_whole_and_streamed(
    router_url: str, model: str
) -> None:
    async with ollama.AsyncClient(host=router_url) as client:
        whole = await client.chat(model=model, messages=user(), think=True)
        thoughts: list[str] = []
        text: list[str] = []
        async for part in await client.chat(model=model, messages=user(), think=True, stream=True):
            if part.message.thinking:
                assert not "".join(text), "reasoning came after the answer's text"
                thoughts.append(part.message.thinking)
            text.append(part.message.content or "")
    assert whole.message.thinking == expected_thinking(model, QUESTION)
    assert whole.message.content == expected_text(model, QUESTION, TOKENS)
    assert len(thoughts) > 1  # piece by piece, as the model reasons
    assert "".join(thoughts) == expected_thinking(model, QUESTION)
    assert "".join(text) == expected_text(model, QUESTION, TOKENS)


@BOTH_WIRES
async def test_ollama_generate_returns_the_thinking_whole_and_streamed(
    router_url: str, model: str
) -> None:
    async with ollama.AsyncClient(host=router_url) as client:
        whole = await client.generate(model=model, prompt=QUESTION, think=True)
        thoughts: list[str] = []
        text: list[str] = []
        async for part in await client.generate(
            model=model, prompt=QUESTION, think=True, stream=True
        ):
            thoughts.append(part.thinking or "")
            text.append(part.response)
    assert whole.thinking == expected_thinking(model, QUESTION)
    assert whole.response == expected_text(model, QUESTION, TOKENS)
    assert "".join(thoughts) == expected_thinking(model, QUESTION)
    assert "".join(text) == expected_text(model, QUESTION, TOKENS)


@BOTH_WIRES
async def test_openai_chat_returns_reasoning_content_whole_and_streamed(
    router_url: str, model: str
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=0)
    whole = await client.chat.completions.create(
        model=model, messages=user(), extra_body=ENABLE_THINKING
    )
    thoughts: list[str] = []
    text: list[str] = []
    async for chunk in await client.chat.completions.create(
        model=model, messages=user(), extra_body=ENABLE_THINKING, stream=True
    ):
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            thoughts.append(extra.get("reasoning_content") or "")
            text.append(choice.delta.content or "")
    await client.close()
    message = whole.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == expected_thinking(model, QUESTION)
    assert message.content == expected_text(model, QUESTION, TOKENS)
    assert "".join(thoughts) == expected_thinking(model, QUESTION)
    assert "".join(text) == expected_text(model, QUESTION, TOKENS)


@BOTH_WIRES
async def test_anthropic_answers_a_thinking_block_before_the_text_whole_and_streamed(
    router_url: str, model: str
) -> None:
    client = anthropic.AsyncAnthropic(base_url=router_url, api_key="x", max_retries=0)
    whole = await client.messages.create(
        model=model, max_tokens=2048, messages=user(), thinking=THINKING_ON
    )
    deltas: list[str] = []
    async with client.messages.stream(
        model=model, max_tokens=2048, messages=user(), thinking=THINKING_ON
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "thinking_delta":
                deltas.append(event.delta.thinking)
        streamed = await stream.get_final_message()
    await client.close()
    for message in (whole, streamed):
        thinking, text = message.content
        assert thinking.type == "thinking"
        assert thinking.thinking == expected_thinking(model, QUESTION)
        assert thinking.signature == ""
        assert text.type == "text"
        assert text.text == expected_text(model, QUESTION, TOKENS)
    assert "".join(deltas) == expected_thinking(model, QUESTION)


async def test_anthropic_thinking_display_omitted_gives_empty_thinking_blocks(
    router_url: str,
) -> None:
    """`display: omitted`: the thinking block is there (the model thought), its text not."""
    omitted: Any = {**THINKING_ON, "display": "omitted"}
    client = anthropic.AsyncAnthropic(base_url=router_url, api_key="x", max_retries=0)
    whole = await client.messages.create(
        model=THINKS_B, max_tokens=2048, messages=user(), thinking=omitted
    )
    async with client.messages.stream(
        model=THINKS_B, max_tokens=2048, messages=user(), thinking=omitted
    ) as stream:
        streamed = await stream.get_final_message()
    with pytest.raises(anthropic.BadRequestError, match=r"thinking\.display"):
        await client.messages.create(
            model=THINKS_B,
            max_tokens=2048,
            messages=user(),
            thinking=cast(Any, {**THINKING_ON, "display": "full"}),
        )
    await client.close()
    for message in (whole, streamed):
        thinking, text = message.content
        assert isinstance(thinking, anthropic.types.ThinkingBlock)
        assert thinking.thinking == ""
        assert isinstance(text, anthropic.types.TextBlock)
        assert text.text == expected_text(THINKS_B, QUESTION, TOKENS)


@BOTH_WIRES
async def test_responses_answer_a_reasoning_item_before_the_message_whole_and_streamed(
    router_url: str, model: str
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=0)
    whole = await client.responses.create(
        model=model, input=QUESTION, reasoning={"effort": "medium"}, store=False
    )
    deltas: list[str] = []
    async with client.responses.stream(
        model=model, input=QUESTION, reasoning={"effort": "medium"}, store=False
    ) as stream:
        async for event in stream:
            if event.type == "response.reasoning_text.delta":
                deltas.append(event.delta)
        streamed = await stream.get_final_response()
    await client.close()
    for response in (whole, streamed):
        reasoning, message = response.output
        assert reasoning.type == "reasoning"
        assert reasoning.content is not None
        assert [part.text for part in reasoning.content] == [expected_thinking(model, QUESTION)]
        assert message.type == "message"
        assert response.output_text == expected_text(model, QUESTION, TOKENS)
    assert "".join(deltas) == expected_thinking(model, QUESTION)


@BOTH_WIRES
async def test_a_request_that_does_not_ask_to_think_gets_no_reasoning(
    router_url: str, model: str
) -> None:
    async with ollama.AsyncClient(host=router_url) as client:
        chat = await client.chat(model=model, messages=user())
        streamed = [
            part async for part in await client.chat(model=model, messages=user(), stream=True)
        ]
        unasked = await client.chat(model=model, messages=user(), think=False)
    assert chat.message.thinking is None
    assert all(part.message.thinking is None for part in streamed)
    assert unasked.message.thinking is None
    openai_client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=0)
    completion = await openai_client.chat.completions.create(model=model, messages=user())
    await openai_client.close()
    assert "reasoning_content" not in (completion.choices[0].message.model_extra or {})
    anthropic_client = anthropic.AsyncAnthropic(base_url=router_url, api_key="x", max_retries=0)
    message = await anthropic_client.messages.create(model=model, max_tokens=64, messages=user())
    await anthropic_client.close()
    assert [block.type for block in message.content] == ["text"]
    async with httpx.AsyncClient(base_url=router_url, timeout=30) as http:
        native = (await http.post("/infer", json={"model": model, "prompt": QUESTION})).json()
    assert "thinking" not in native["result"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_model_that_cannot_think_refuses_by_name_on_every_dialect(
    router_url: str, stream: bool
) -> None:
    """Each dialect names the field its caller sent: `think`, `reasoning.effort`,
    `thinking`."""
    async with ollama.AsyncClient(host=router_url) as client:
        with pytest.raises(ollama.ResponseError, match=r"^think: .*does not support thinking"):
            await client.chat(model=PLAIN, messages=user(), think=True, stream=False)
    openai_client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.responses.create(
            model=PLAIN, input=QUESTION, reasoning={"effort": "high"}, store=False, stream=stream
        )
    assert refused.value.param == "reasoning.effort"
    assert "does not support thinking" in refused.value.message
    await openai_client.close()
    anthropic_client = anthropic.AsyncAnthropic(base_url=router_url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match=r"thinking: .*does not support thinking"):
        await anthropic_client.messages.create(
            model=PLAIN,
            max_tokens=2048,
            messages=user(),
            thinking={"type": "enabled", "budget_tokens": 1024},
            stream=stream,
        )
    await anthropic_client.close()


async def test_the_native_stream_carries_reasoning_pieces_and_the_answer_its_whole_thinking(
    router_url: str,
) -> None:
    job = {"model": THINKS_A, "prompt": QUESTION, "stream": True, "extra": {"think": True}}
    async with (
        httpx.AsyncClient(base_url=router_url, timeout=30) as http,
        http.stream("POST", "/infer", json=job) as response,
    ):
        lines = [line async for line in response.aiter_lines()]
    events = [httpx.Response(200, content=line).json() for line in lines]
    *pieces, final = events
    assert "".join(piece.get("thinking", "") for piece in pieces) == expected_thinking(
        THINKS_A, QUESTION
    )
    assert "".join(piece["delta"] for piece in pieces) == expected_text(THINKS_A, QUESTION, TOKENS)
    assert final["result"]["thinking"] == expected_thinking(THINKS_A, QUESTION)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_kept_answer_replays_its_reasoning(router_url: str, stream: bool) -> None:
    """The same idempotency key twice: the second answer is the kept one, thinking and all
    (a whole answer replayed to a stream too)."""
    client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=0)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await client.chat.completions.create(
        model=THINKS_B, messages=user(), extra_body=ENABLE_THINKING, extra_headers=key
    )
    assert (first.choices[0].message.model_extra or {}).get("reasoning_content")
    raw = await client.chat.completions.with_raw_response.create(
        model=THINKS_B,
        messages=user(),
        extra_body=ENABLE_THINKING,
        extra_headers=key,
        stream=stream,
    )
    assert raw.headers.get("x-inferbus-cached") == "true"
    parsed: Any = raw.parse()
    if stream:
        thoughts = [
            (choice.delta.model_extra or {}).get("reasoning_content") or ""
            async for chunk in parsed
            for choice in chunk.choices
        ]
        replayed = "".join(thoughts)
    else:
        replayed = (parsed.choices[0].message.model_extra or {})["reasoning_content"]
    await client.close()
    assert replayed == expected_thinking(THINKS_B, QUESTION)


async def test_a_legacy_completion_stream_carries_only_the_text_of_a_thinking_model(
    router_url: str,
) -> None:
    """`/v1/completions` has no place for reasoning: its pieces are not sent at all (no
    empty text chunk stands for them)."""
    client = openai.AsyncOpenAI(base_url=f"{router_url}/v1", api_key="x", max_retries=0)
    texts = [
        chunk.choices[0].text
        async for chunk in await client.completions.create(
            model=THINKS_A, prompt=QUESTION, stream=True, extra_body={"think": True}
        )
        if chunk.choices
    ]
    await client.close()
    assert "".join(texts) == expected_text(THINKS_A, QUESTION, TOKENS)
    assert all(texts[:-1]), texts  # only the finish chunk is empty
