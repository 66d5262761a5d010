"""The official `openai` client's Responses API pointed at the router: plain answers,
instructions, a function-call round trip, structured output, streams reassembled, forced
tool choice, and the refusals of what a stateless router cannot do — through two workers
in front of the simulator in each wire format (Ollama's, OpenAI's)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from router.service import RouterService
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.test_worker_openai_features import ASK_WEATHER, MODELS, PERSON_SCHEMA, TOOL_MODEL
from tools.simulator import Simulator, expected_text

TOKENS = 8
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}


@pytest.fixture(scope="module", params=["ollama", "vllm"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def router(
    kind: str, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> AsyncIterator[RouterService]:
    """Two workers, each in front of its own simulator speaking `kind`'s wire format."""
    async with AsyncExitStack() as stack:
        for worker in ("a", "b"):
            sim = await stack.enter_async_context(Simulator(models=list(MODELS), tokens=TOKENS))
            await stack.enter_async_context(
                start_worker(node_id=f"{node_id}-{worker}", backends=[backend(sim.url, kind)])
            )
        yield await stack.enter_async_context(start_router())


@pytest.fixture
async def client(router: RouterService) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


async def test_a_plain_response(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model=TOOL_MODEL, input="hello there")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == TOOL_MODEL
    assert response.output_text == expected_text(TOOL_MODEL, "hello there", TOKENS)
    assert response.usage is not None
    assert response.usage.input_tokens == 2
    assert response.usage.output_tokens == TOKENS
    assert response.usage.total_tokens == 2 + TOKENS


async def test_instructions_reach_the_model(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model=TOOL_MODEL, instructions="be brief now", input="hello there"
    )
    as_items = await client.responses.create(
        model=TOOL_MODEL,
        input=[
            {"role": "developer", "content": "be brief now"},
            {"role": "user", "content": [{"type": "input_text", "text": "hello there"}]},
        ],
    )
    assert response.usage is not None
    assert as_items.usage is not None
    assert response.usage.input_tokens == as_items.usage.input_tokens == 5
    assert response.output_text == as_items.output_text


async def test_max_output_tokens_makes_an_incomplete_response(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model=TOOL_MODEL, input="hello there", max_output_tokens=3, temperature=0.3, top_p=0.9
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 3


async def test_a_function_call_round_trip(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(model=TOOL_MODEL, input=ASK_WEATHER, tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    history: Any = [
        {"role": "user", "content": ASK_WEATHER},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky":"clear"}'},
    ]
    final = await client.responses.create(model=TOOL_MODEL, input=history, tools=[WEATHER])
    assert [item.type for item in final.output] == ["message"]
    assert final.output_text


async def test_text_format_json_schema(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model=TOOL_MODEL,
        input="describe a person",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA}},
    )
    jsonschema.validate(json.loads(response.output_text), PERSON_SCHEMA)


async def test_forced_tool_choice_calls_the_function(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model=TOOL_MODEL,
        input="tell me something",  # names no tool: only the choice forces it
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


async def test_a_streamed_text_response_reassembles(client: openai.AsyncOpenAI) -> None:
    whole = await client.responses.create(model=TOOL_MODEL, input="hi you")
    async with client.responses.stream(model=TOOL_MODEL, input="hi you") as stream:
        kinds = []
        deltas = []
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert len(deltas) > 1
    assert "".join(deltas) == whole.output_text == final.output_text
    assert final.usage is not None
    assert final.usage.output_tokens == TOKENS


async def test_a_streamed_function_call_reassembles(client: openai.AsyncOpenAI) -> None:
    whole = await client.responses.create(model=TOOL_MODEL, input=ASK_WEATHER, tools=[WEATHER])
    async with client.responses.stream(
        model=TOOL_MODEL, input=ASK_WEATHER, tools=[WEATHER]
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    streamed = [item for item in final.output if item.type == "function_call"]
    expected = [item for item in whole.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in streamed] == [
        (c.call_id, c.name, c.arguments) for c in expected
    ]


@pytest.mark.parametrize(
    ("more", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ],
)
async def test_what_a_stateless_router_cannot_do_is_refused_by_name(
    client: openai.AsyncOpenAI, more: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=TOOL_MODEL, **{"input": "hi", **more})
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == param


async def test_an_unknown_model_is_not_found_whole_and_streamed(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.NotFoundError):
        async with client.responses.stream(model="no-such-model", input="hi") as stream:
            await stream.get_final_response()


async def test_the_raw_stream_numbers_its_events(router: RouterService) -> None:
    body = {"model": TOOL_MODEL, "input": "hi", "stream": True}
    async with httpx.AsyncClient(base_url=router.url) as http:
        answer = await http.post("/v1/responses", json=body)
    events = [json.loads(block.split("\n")[1][6:]) for block in answer.text.strip().split("\n\n")]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == expected_text(
        TOOL_MODEL, "hi", TOKENS
    )
