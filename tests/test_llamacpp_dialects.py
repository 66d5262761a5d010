"""Anthropic's Messages and OpenAI's Responses through the router to a real llama.cpp
server (llama-cpp-python's, a tiny random-weight model): the real runtime's token counts,
stop reasons and grammar-enforced JSON reach the official clients in their own shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anthropic
import jsonschema
import openai
import pytest

from router.service import RouterService
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.llamacpp import LlamaCppServer
from tests.test_llamacpp_openai_features import CHOICE_SCHEMA


@pytest.fixture
async def router(
    llama_server: LlamaCppServer, start_worker: WorkerFactory, start_router: RouterFactory
) -> AsyncIterator[RouterService]:
    async with (
        start_worker(backends=[backend(llama_server.url, kind="llamacpp")]),
        start_router() as service,
    ):
        yield service


async def test_anthropic_messages_whole_streamed_and_counted(
    router: RouterService, llama_server: LlamaCppServer
) -> None:
    client = anthropic.AsyncAnthropic(base_url=router.url, api_key="x", max_retries=0)
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "count to five"}]
    greedy = {"temperature": 0}
    whole = await client.messages.create(
        model=llama_server.model,
        max_tokens=6,
        system="you count",
        messages=messages,
        extra_body=greedy,
    )
    async with client.messages.stream(
        model=llama_server.model,
        max_tokens=6,
        system="you count",
        messages=messages,
        extra_body=greedy,
    ) as stream:
        streamed = await stream.get_final_message()
    counted = await client.messages.count_tokens(
        model=llama_server.model, system="you count", messages=messages
    )
    await client.close()
    assert whole.stop_reason in ("max_tokens", "end_turn")
    assert whole.usage.output_tokens <= 6
    assert whole.usage.input_tokens > 0
    # llama-cpp-python's server sends no usage in a stream: only the text can be compared.
    assert [block.model_dump(include={"type", "text"}) for block in streamed.content] == [
        block.model_dump(include={"type", "text"}) for block in whole.content
    ]
    assert counted.input_tokens == whole.usage.input_tokens  # the server's own tokenizer


async def test_responses_with_a_json_schema_enforced_by_the_grammar(
    router: RouterService, llama_server: LlamaCppServer
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
    text_format: openai.types.responses.ResponseTextConfigParam = {
        "format": {"type": "json_schema", "name": "choice", "schema": CHOICE_SCHEMA}
    }
    whole = await client.responses.create(
        model=llama_server.model,
        input="pick a color",
        max_output_tokens=48,
        temperature=0,
        text=text_format,
    )
    async with client.responses.stream(
        model=llama_server.model,
        input="pick a color",
        max_output_tokens=48,
        temperature=0,
        text=text_format,
    ) as stream:
        streamed = await stream.get_final_response()
    await client.close()
    jsonschema.validate(json.loads(whole.output_text), CHOICE_SCHEMA)
    assert streamed.output_text == whole.output_text  # temperature 0: the same answer
    assert whole.usage is not None
    assert whole.usage.input_tokens > 0
