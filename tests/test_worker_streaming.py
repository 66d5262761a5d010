"""Streamed jobs sent by hand over NATS: chunks in order, one final answer, cancellation."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from nats.aio.client import Client as NatsClient

from services.nats_server import NatsServer
from tests.conftest import WorkerFactory, backend
from tests.jobs import llm, stream, until
from tests.llamacpp import LlamaCppServer
from tools.simulator import Fault, Simulator, expected_text, expected_tokens

ROOT = Path(__file__).resolve().parent.parent


async def test_stream_delivers_every_token_in_order_then_one_final_answer(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        chunks, final = await stream(nc, llm(node_id), {"prompt": "tell me", "stream": True})
    assert [chunk.seq for chunk in chunks] == list(range(1, 9))
    assert [chunk.delta for chunk in chunks] == expected_tokens("llama3:8b", "tell me", 8)
    assert final.done is True
    assert final.status == "ok"
    assert final.result is not None
    assert final.result.text == expected_text("llama3:8b", "tell me", 8)
    assert final.result.usage.completion_tokens == 8


async def test_many_concurrent_streams_each_arrive_whole(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.token_interval_ms = 2
    async with start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 50}):
        results = await asyncio.gather(
            *(stream(nc, llm(node_id), {"prompt": f"story {i}", "stream": True}) for i in range(50))
        )
    for i, (chunks, final) in enumerate(results):
        assert "".join(chunk.delta for chunk in chunks) == expected_text(
            "llama3:8b", f"story {i}", 8
        )
        assert final.status == "ok"


async def test_runtime_dying_mid_stream_ends_with_an_error_not_silence(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("drop", after_chunks=3))
    async with start_worker(backends=[backend(simulator.url)]):
        chunks, final = await stream(nc, llm(node_id), {"prompt": "tell me", "stream": True})
    assert len(chunks) == 3
    assert final.done is True
    assert final.error is not None
    assert final.error.code in {"BACKEND_ERROR", "BACKEND_UNAVAILABLE"}


async def test_cancel_stops_the_runtime_call_and_frees_the_slot(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.tokens = 400
    simulator.token_interval_ms = 20  # 8 s of tokens unless cancelled
    async with start_worker(
        backends=[backend(simulator.url)], limits={"llm_concurrency": 1}
    ) as worker:
        job = {"job_id": "cancel-me", "prompt": "long story", "stream": True}
        running = asyncio.create_task(stream(nc, llm(node_id), job))
        await until(lambda: simulator.open_connections == 1)
        await nc.publish(f"node.{node_id}.cancel", json.dumps({"job_id": "cancel-me"}).encode())
        chunks, final = await running
        await until(lambda: simulator.open_connections == 0, timeout_s=1)
        assert worker.admission.load()["llm"].inflight == 0
    assert final.error is not None
    assert final.error.code == "CANCELLED"
    assert len(chunks) < 400


async def test_a_duplicate_of_a_running_stream_gets_the_answer_as_one_chunk_without_a_second_call(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.token_interval_ms = 30
    job = {"idempotency_key": "once", "prompt": "tell me", "stream": True}
    async with start_worker(backends=[backend(simulator.url)]):
        first = asyncio.create_task(stream(nc, llm(node_id), job))
        await until(lambda: simulator.open_connections == 1)
        dup_chunks, dup_final = await stream(nc, llm(node_id), job)
        chunks, final = await first
    assert simulator.calls["llama3:8b"] == 1
    assert len(chunks) == 8
    assert final.result is not None
    # documented: a duplicate gets the whole text as one chunk, then the final answer
    assert [chunk.delta for chunk in dup_chunks] == [final.result.text]
    assert dup_final.cached is True
    assert dup_final.done is True
    assert dup_final.result is not None
    assert dup_final.result.text == final.result.text


async def test_llamacpp_streams_real_tokens_over_nats(
    nc: NatsClient, llama_server: LlamaCppServer, start_worker: WorkerFactory, node_id: str
) -> None:
    job = {"prompt": "hello", "stream": True, "params": {"max_tokens": 8, "temperature": 0}}
    async with start_worker(backends=[backend(llama_server.url, kind="llamacpp")]):
        chunks, final = await stream(nc, llm(node_id), job)
    assert chunks
    assert final.status == "ok", final.error
    assert final.result is not None
    assert "".join(chunk.delta for chunk in chunks) == final.result.text
    assert final.result.finish_reason == "length"


async def test_inferbus_req_stream_prints_the_tokens(
    nats_server: NatsServer, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.cli",
            "req",
            node_id,
            "tell me",
            "--stream",
            "--server",
            nats_server.url,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert out.decode() == expected_text("llama3:8b", "tell me", 8) + "\n"
