"""Streaming through the router: SSE and NDJSON, failover before the first token,
errors after it, and a client that goes away stopping the GPU."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import until
from tests.llamacpp import LlamaCppServer
from tools.simulator import Fault, SimModel, Simulator, expected_text


def messages(content: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": content}]


async def test_openai_client_streams_chunks_then_done(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]), start_router() as router:
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
        pieces: list[str] = []
        finish: list[str | None] = []
        usage = None
        stream = await client.chat.completions.create(
            model="llama3:8b",
            messages=messages("tell me"),
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish.append(choice.finish_reason)
        await client.close()
    assert "".join(pieces) == expected_text("llama3:8b", "tell me", 8)
    assert finish[-1] == "stop"
    assert usage is not None
    assert usage.completion_tokens == 8


async def test_fifty_concurrent_streams_each_arrive_whole_and_in_order(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    simulator.token_interval_ms = 2
    async with (
        start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 64}),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):

        async def one(i: int) -> str:
            body = {"model": "llama3:8b", "messages": messages(f"story {i}"), "stream": True}
            text = ""
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = [line async for line in response.aiter_lines() if line]
            assert lines[-1] == "data: [DONE]"
            for line in lines[:-1]:
                for choice in json.loads(line.removeprefix("data: "))["choices"]:
                    text += choice["delta"].get("content", "")
            return text

        texts = await asyncio.gather(*(one(i) for i in range(50)))
    for i, text in enumerate(texts):
        assert text == expected_text("llama3:8b", f"story {i}", 8)


async def test_infer_streams_ndjson_lines_then_the_final_answer(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url) as http,
        http.stream("POST", "/infer", json={"prompt": "tell me", "stream": True}) as response,
    ):
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert [line["seq"] for line in lines[:-1]] == list(range(1, 9))
    final = lines[-1]
    assert final["done"] is True
    assert final["route"]["via"] == "remote"
    assert "".join(line["delta"] for line in lines[:-1]) == final["result"]["text"]


async def test_a_node_silent_before_the_first_token_is_left_for_the_next(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str
) -> None:
    # Selection ranks a running model before an installed one: the hanging node goes first.
    async with (
        Simulator(models=[SimModel("m:1b")]) as silent,
        Simulator(models=[SimModel("m:1b", running=False)]) as quick,
        start_worker(node_id=f"{node_id}-silent", backends=[backend(silent.url)]),
        start_worker(node_id=f"{node_id}-quick", backends=[backend(quick.url)]),
        start_router(offload={"first_token_timeout_ms": 300}) as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        silent.set_fault("m:1b", Fault("hang"))
        body = {"prompt": "hi", "model": "m:1b", "stream": True}
        async with http.stream("POST", "/infer", json=body) as response:
            lines = [json.loads(line) async for line in response.aiter_lines() if line]
        await until(lambda: silent.open_connections == 0)
    final = lines[-1]
    assert final["status"] == "ok", final
    assert "".join(line["delta"] for line in lines[:-1]) == expected_text("m:1b", "hi", 16)
    attempts = final["route"]["attempts"]
    assert [attempt["node"] for attempt in attempts] == [f"{node_id}-silent", f"{node_id}-quick"]
    assert attempts[0]["outcome"] != "ok"
    assert attempts[-1]["outcome"] == "ok"


async def test_a_runtime_dying_mid_stream_ends_it_with_an_error_event(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    simulator.set_fault("llama3:8b", Fault("drop", after_chunks=3))
    async with start_worker(backends=[backend(simulator.url)]), start_router() as router:
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
        pieces: list[str] = []
        stream = await client.chat.completions.create(
            model="llama3:8b",
            messages=messages("tell me"),
            stream=True,
        )
        try:
            async for chunk in stream:
                pieces.extend(choice.delta.content or "" for choice in chunk.choices)
            raised = False
        except openai.APIError:
            raised = True
        await client.close()
    assert raised
    assert len(pieces) == 3


async def test_a_client_that_goes_away_stops_the_gpu_and_frees_the_slot(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    simulator.tokens = 500
    simulator.token_interval_ms = 20  # 10 s of tokens unless cancelled
    async with (
        start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 1}) as worker,
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=10) as http,
    ):
        body = {"model": "llama3:8b", "messages": messages("long"), "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    break  # the first token is in; now hang up
        await until(lambda: simulator.open_connections == 0, timeout_s=1)
        await until(lambda: worker.admission.load()["llm"].inflight == 0, timeout_s=1)


async def test_llamacpp_tokens_stream_through_the_router(
    llama_server: LlamaCppServer, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    async with (
        start_worker(backends=[backend(llama_server.url, kind="llamacpp")]),
        start_router() as router,
    ):
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model=llama_server.model,
            messages=messages("hello"),
            stream=True,
            max_tokens=8,
            temperature=0,
        )
        pieces = [choice.delta.content or "" async for chunk in stream for choice in chunk.choices]
        await client.close()
    assert "".join(pieces)
