"""LangChain's `ChatOpenAI` pointed at the router, as a second real OpenAI client: the
fields it sends (`max_completion_tokens`, tools, `json_schema` response formats) reach the
model through NATS and the worker, and its parsers accept what comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from router.service import RouterService
from tests.conftest import RouterFactory, WorkerFactory, backend
from tools.simulator import SimModel, Simulator

MODEL = "qwen3:8b"


class Person(BaseModel):
    name: str
    age: int


@tool
def get_weather(city: str, days: int) -> str:
    """The weather in a city for some days."""
    return f"clear in {city} for {days} days"


@pytest.fixture
async def router(
    start_worker: WorkerFactory, start_router: RouterFactory
) -> AsyncIterator[RouterService]:
    async with (
        Simulator(models=[SimModel(MODEL, family="qwen3")], tokens=8) as sim,
        start_worker(backends=[backend(sim.url)]),
        start_router() as service,
    ):
        yield service


def chat_model(router: RouterService, **more: object) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, base_url=f"{router.url}/v1", api_key="unused", max_retries=0, **more
    )


async def test_bind_tools_gets_the_tool_call(router: RouterService) -> None:
    answer = (
        await chat_model(router)
        .bind_tools([get_weather])
        .ainvoke("what is the weather in Paris? call get_weather")
    )
    assert [call["name"] for call in answer.tool_calls] == ["get_weather"]
    arguments = answer.tool_calls[0]["args"]
    assert isinstance(arguments["city"], str)
    assert isinstance(arguments["days"], int)


async def test_with_structured_output_parses_the_schema(router: RouterService) -> None:
    person = await chat_model(router).with_structured_output(Person).ainvoke("a person")
    assert isinstance(person, Person)


async def test_max_tokens_is_honoured(router: RouterService) -> None:
    answer = await chat_model(router, max_tokens=3).ainvoke("hello there")
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == 3


async def test_with_structured_output_by_function_calling_on_ollama(
    router: RouterService,
) -> None:
    """LangChain forces the schema's tool (`tool_choice` naming it); the worker's Ollama
    runtime cannot be told to call a tool, so its output is held to the tool's schema."""
    structured = chat_model(router).with_structured_output(Person, method="function_calling")
    person = await structured.ainvoke("a person")
    assert isinstance(person, Person)
