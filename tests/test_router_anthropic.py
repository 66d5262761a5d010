"""The official `anthropic` client pointed at the router: messages whole and streamed,
system prompts, a tool round trip, forced tool choice, count_tokens and its error classes,
through two workers in front of the simulator in each wire format (Ollama's, OpenAI's)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from router.service import RouterService
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.test_worker_openai_features import ASK_WEATHER, MODELS, PLAIN_MODEL, TOOL_MODEL
from tools.simulator import SimModel, Simulator, expected_text

TOKENS = 8
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1},
        },
        "required": ["city", "days"],
    },
}
VISION_MODEL = "llava:7b"
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
    )
).decode()


@pytest.fixture(scope="module", params=["ollama", "vllm"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def router(
    kind: str, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> AsyncIterator[RouterService]:
    """Two workers, each in front of its own simulator speaking `kind`'s wire format."""
    models = [*MODELS, SimModel(VISION_MODEL, vision=True)]
    async with AsyncExitStack() as stack:
        for worker in ("a", "b"):
            sim = await stack.enter_async_context(Simulator(models=models, tokens=TOKENS))
            await stack.enter_async_context(
                start_worker(node_id=f"{node_id}-{worker}", backends=[backend(sim.url, kind)])
            )
        yield await stack.enter_async_context(start_router())


@pytest.fixture
async def sim_pair(router: RouterService) -> None:
    """The two workers of `router`, for a test that starts a router of its own."""


@pytest.fixture
async def client(router: RouterService) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=router.url, api_key="unused", max_retries=0)
    yield client
    await client.close()


def ask(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def test_a_plain_message(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=TOOL_MODEL, max_tokens=64, messages=ask("hello there")
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == TOOL_MODEL
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_text(TOOL_MODEL, "hello there", TOKENS)
    assert message.usage.input_tokens == 2  # the simulator counts words
    assert message.usage.output_tokens == TOKENS


async def test_a_system_prompt_string_or_blocks_reaches_the_model(
    client: anthropic.AsyncAnthropic,
) -> None:
    as_string = await client.messages.create(
        model=TOOL_MODEL, max_tokens=64, system="be brief now", messages=ask("hello")
    )
    as_blocks = await client.messages.create(
        model=TOOL_MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": "be brief now"}],
        messages=ask("hello"),
    )
    # The system prompt's three words are counted in the prompt.
    assert as_string.usage.input_tokens == as_blocks.usage.input_tokens == 4


async def test_max_tokens_caps_the_answer(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=TOOL_MODEL,
        max_tokens=3,
        messages=ask("hello there"),
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["zz"]},
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_a_stop_sequence_ends_the_answer_and_is_named_where_the_runtime_says(
    client: anthropic.AsyncAnthropic, kind: str, streamed: bool
) -> None:
    text = expected_text(TOOL_MODEL, "hello there", TOKENS)
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    asked: dict[str, Any] = {
        "model": TOOL_MODEL,
        "max_tokens": 64,
        "messages": ask("hello there"),
        "stop_sequences": ["not in the answer", stop],
    }
    if streamed:
        async with client.messages.stream(**asked) as stream:
            message = await stream.get_final_message()
    else:
        message = await client.messages.create(**asked)
    assert message.content[0].text == text[: text.find(stop)]  # type: ignore[union-attr]
    if kind == "vllm":  # vLLM says which stop string ended the answer
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)
    else:  # Ollama does not: the answer ended as any other
        assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


async def test_a_tool_round_trip_with_tool_result(client: anthropic.AsyncAnthropic) -> None:
    first = await client.messages.create(
        model=TOOL_MODEL, max_tokens=256, messages=ask(ASK_WEATHER), tools=[WEATHER]
    )
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER["input_schema"])
    history: Any = [
        *ask(ASK_WEATHER),
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        },
    ]
    final = await client.messages.create(
        model=TOOL_MODEL, max_tokens=256, messages=history, tools=[WEATHER]
    )
    assert final.stop_reason == "end_turn"
    assert [block.type for block in final.content] == ["text"]


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
async def test_forced_tool_choice_calls_the_tool(
    client: anthropic.AsyncAnthropic, choice: Any
) -> None:
    message = await client.messages.create(
        model=TOOL_MODEL,
        max_tokens=256,
        messages=ask("tell me something"),  # names no tool: only the choice forces it
        tools=[WEATHER],
        tool_choice=choice,
    )
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER["input_schema"])


async def test_a_streamed_message_reassembles_into_the_whole_one(
    client: anthropic.AsyncAnthropic,
) -> None:
    whole = await client.messages.create(model=TOOL_MODEL, max_tokens=64, messages=ask("hi you"))
    async with client.messages.stream(
        model=TOOL_MODEL, max_tokens=64, messages=ask("hi you")
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) > 1
    assert "".join(texts) == whole.content[0].text == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == TOKENS
    assert final.usage.input_tokens == whole.usage.input_tokens


async def test_a_streamed_tool_use_reassembles_into_the_whole_one(
    client: anthropic.AsyncAnthropic,
) -> None:
    whole = await client.messages.create(
        model=TOOL_MODEL, max_tokens=256, messages=ask(ASK_WEATHER), tools=[WEATHER]
    )
    async with client.messages.stream(
        model=TOOL_MODEL, max_tokens=256, messages=ask(ASK_WEATHER), tools=[WEATHER]
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start"
    assert "content_block_start" in kinds
    assert "input_json" in kinds  # the arguments arrive as input_json_delta pieces
    assert kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]


async def test_an_image_reaches_a_vision_model(client: anthropic.AsyncAnthropic) -> None:
    content: Any = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "what is this"},
    ]
    message = await client.messages.create(
        model=VISION_MODEL, max_tokens=64, messages=[{"role": "user", "content": content}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_text(VISION_MODEL, "what is this", TOKENS)


async def test_count_tokens_is_the_runtimes_own_count(client: anthropic.AsyncAnthropic) -> None:
    counted = await client.messages.count_tokens(
        model=TOOL_MODEL, system="be brief now", messages=ask("hello there")
    )
    answered = await client.messages.create(
        model=TOOL_MODEL, max_tokens=64, system="be brief now", messages=ask("hello there")
    )
    assert counted.input_tokens == answered.usage.input_tokens == 5


async def test_a_bad_request_and_an_unknown_model_raise_the_clients_classes(
    client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await client.post(
            "/v1/messages",
            cast_to=httpx.Response,
            body={"model": TOOL_MODEL, "messages": ask("hi")},
        )
    with pytest.raises(anthropic.BadRequestError, match="role"):
        await client.messages.create(
            model=TOOL_MODEL,
            max_tokens=8,
            messages=[{"role": "system", "content": "x"}],
        )
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="no-such-model", max_tokens=8, messages=ask("hi"))
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="tools"):
        await client.messages.create(
            model=PLAIN_MODEL, max_tokens=8, messages=ask(ASK_WEATHER), tools=[WEATHER]
        )
    with pytest.raises(anthropic.BadRequestError, match="web_search"):
        await client.messages.create(
            model=TOOL_MODEL,
            max_tokens=8,
            messages=ask("hi"),
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )


async def test_a_stream_that_fails_before_its_first_piece_is_an_error_body(
    client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.NotFoundError):
        async with client.messages.stream(
            model="no-such-model", max_tokens=8, messages=ask("hi")
        ) as stream:
            await stream.get_final_message()


async def test_raw_events_follow_anthropics_sequence(router: RouterService) -> None:
    body = {"model": TOOL_MODEL, "max_tokens": 16, "stream": True, "messages": ask("hi")}
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}
    async with httpx.AsyncClient(base_url=router.url) as http:
        answer = await http.post("/v1/messages", json=body, headers=headers)
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1][6:]))
        for block in answer.text.strip().split("\n\n")
    ]
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


async def test_thinking_is_refused_by_name_for_a_model_that_cannot_think(
    client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="does not support thinking"):
        await client.messages.create(
            model=PLAIN_MODEL,
            max_tokens=2048,
            messages=ask("hi"),
            thinking={"type": "enabled", "budget_tokens": 1024},
        )


async def test_keys_are_taken_as_x_api_key_or_bearer(
    sim_pair: None, start_router: RouterFactory
) -> None:
    async with start_router(http={"host": "127.0.0.1", "port": 0, "api_keys": ["sekrit"]}) as svc:
        right = anthropic.AsyncAnthropic(base_url=svc.url, api_key="sekrit", max_retries=0)
        wrong = anthropic.AsyncAnthropic(base_url=svc.url, api_key="nope", max_retries=0)
        answered = await right.messages.create(model=TOOL_MODEL, max_tokens=8, messages=ask("hi"))
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.messages.create(model=TOOL_MODEL, max_tokens=8, messages=ask("hi"))
        async with httpx.AsyncClient(base_url=svc.url) as http:
            body = {"model": TOOL_MODEL, "max_tokens": 8, "messages": ask("hi")}
            by_header = await http.post("/v1/messages", json=body, headers={"x-api-key": "sekrit"})
            refused = await http.post("/v1/messages", json=body, headers={"x-api-key": "nope"})
        await right.close()
        await wrong.close()
    assert answered.content[0].type == "text"
    assert by_header.status_code == 200
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
