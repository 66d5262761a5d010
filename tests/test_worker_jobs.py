"""The worker over real NATS in front of the simulator: inputs, answers, deadlines, busy."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.bus import flush_interest
from services.wire import decode_response
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, until, vision
from tools.simulator import Fault, SimModel, Simulator, expected_text

TINY_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


async def test_prompt_alone_is_answered_by_the_default_model(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        response = await ask(nc, llm(node_id), {"prompt": "hello there"})
    assert response.status == "ok", response.error
    assert response.model == "llama3:8b"
    assert response.node_id == node_id
    assert response.runtime == "ollama"
    assert response.result is not None
    assert response.result.text == expected_text("llama3:8b", "hello there", 8)
    assert response.result.usage.completion_tokens == 8
    assert response.result.usage.prompt_tokens == 2
    assert response.timings.total_ms >= response.timings.backend_ms > 0
    assert simulator.calls["llama3:8b"] == 1


async def test_openai_shaped_job_runs_on_an_openai_compatible_runtime(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    job = {
        "job_id": "job-1",
        "model": "llama3:8b",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is nats"}]},
        ],
        "params": {"max_tokens": 3, "temperature": 0.2},
    }
    async with start_worker(backends=[backend(simulator.url, kind="vllm")]):
        response = await ask(nc, llm(node_id), job)
    assert response.status == "ok", response.error
    assert response.job_id == "job-1"
    assert response.runtime == "vllm"
    assert response.result is not None
    assert response.result.text == expected_text("llama3:8b", "what is nats", 3)
    assert response.result.finish_reason == "length"


async def test_vision_job_with_an_image_reaches_the_vision_model(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        response = await ask(nc, vision(node_id), {"prompt": "what is this", "images": [TINY_PNG]})
        no_image = await ask(nc, vision(node_id), {"prompt": "what is this"})
    assert response.status == "ok", response.error
    assert response.model == "llava:7b"
    assert no_image.error is not None
    assert no_image.error.code == "BAD_REQUEST"
    assert simulator.calls["llava:7b"] == 1


async def test_bad_input_gets_a_structured_error_and_the_worker_keeps_serving(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    bad_inputs: list[bytes] = [
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'{"messages": "hi"}',
        b'{"prompt": 42}',
        b'{"job_id": "j-typed", "prompt": "x", "params": {"max_tokens": "many"}}',
        b"{}",
        b'{"prompt": "x", "stream": "yes please"}',
    ]
    async with start_worker(backends=[backend(simulator.url)]):
        answers = [await ask(nc, llm(node_id), data) for data in bad_inputs]
        after = await ask(nc, llm(node_id), {"prompt": "still there?"})
    for data, answer in zip(bad_inputs, answers, strict=True):
        assert answer.status == "error", data
        assert answer.error is not None
        assert answer.error.code == "BAD_REQUEST", data
        assert answer.error.retryable is False
    assert answers[5].job_id == "j-typed"
    assert "params.max_tokens" in (answers[5].error.message if answers[5].error else "")
    assert after.status == "ok"
    assert sum(simulator.calls.values()) == 1


async def test_unknown_model_is_refused_without_calling_the_runtime(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        response = await ask(nc, llm(node_id), {"prompt": "hi", "model": "gpt-17"})
    assert response.error is not None
    assert response.error.code == "MODEL_NOT_FOUND"
    assert response.error.retryable is True
    assert sum(simulator.calls.values()) == 0


async def test_allow_list_hides_models_the_operator_did_not_allow(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url, models=["llava:7b"])]) as worker:
        response = await ask(nc, llm(node_id), {"prompt": "hi", "model": "llama3:8b"})
        assert set(worker.catalog.models) == {"llava:7b"}
    assert response.error is not None
    assert response.error.code == "MODEL_NOT_FOUND"


async def test_oversized_job_is_refused_with_payload_too_large(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)], limits={"max_request_bytes": 4096}):
        response = await ask(nc, llm(node_id), {"prompt": "x" * 10_000})
    assert response.error is not None
    assert response.error.code == "PAYLOAD_TOO_LARGE"
    assert sum(simulator.calls.values()) == 0


async def test_expired_job_never_reaches_runtime(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    past = int(time.time() * 1000) - 1_000
    async with start_worker(backends=[backend(simulator.url)]):
        spent = await ask(nc, llm(node_id), {"prompt": "hi", "timeout_ms": 0})
        negative = await ask(nc, llm(node_id), {"prompt": "hi", "timeout_ms": -5})
        sat_in_transit = await ask(
            nc, llm(node_id), {"prompt": "hi", "timeout_ms": 60_000, "deadline_unix_ms": past}
        )
    for response in (spent, negative, sat_in_transit):
        assert response.error is not None
        assert response.error.code == "DEADLINE_EXCEEDED"
    assert sum(simulator.calls.values()) == 0


async def test_hanging_runtime_is_cut_off_at_the_deadline_and_the_slot_freed(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("hang", count=1))
    async with start_worker(
        backends=[backend(simulator.url)], limits={"llm_concurrency": 1}
    ) as worker:
        # Without the cut-off this ask would wait for its own 5 s limit and fail.
        hung = await ask(nc, llm(node_id), {"prompt": "hi", "timeout_ms": 300}, timeout_s=5)
        assert worker.admission.load()["llm"].inflight == 0
        after = await ask(nc, llm(node_id), {"prompt": "hi again"})
    assert hung.error is not None
    assert hung.error.code == "DEADLINE_EXCEEDED"
    assert after.status == "ok"


async def test_full_node_answers_busy_at_once_with_retry_after(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.latency_ms = 400
    async with start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 2}):
        answers = await asyncio.gather(
            *(ask(nc, llm(node_id), {"prompt": f"job {i}"}) for i in range(5))
        )
    codes = sorted(a.error.code if a.error else "ok" for a in answers)
    assert codes == ["BUSY", "BUSY", "BUSY", "ok", "ok"]
    busy = next(a for a in answers if a.error)
    assert busy.error is not None
    assert busy.error.retry_after_ms is not None
    assert busy.error.retryable is True
    assert simulator.calls["llama3:8b"] == 2


async def test_jobs_run_concurrently_up_to_capacity(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("hang"))
    async with start_worker(backends=[backend(simulator.url)], limits={"llm_concurrency": 4}):
        jobs = [
            asyncio.create_task(ask(nc, llm(node_id), {"prompt": f"{i}", "timeout_ms": 1_000}))
            for i in range(4)
        ]
        await until(lambda: simulator.open_connections >= 4)
        assert simulator.open_connections == 4  # all four are at the runtime together
        answers = await asyncio.gather(*jobs)
    assert all(a.error and a.error.code == "DEADLINE_EXCEEDED" for a in answers)


async def test_runtime_errors_become_codes_and_nats_service_error_headers(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    simulator.set_fault("llama3:8b", Fault("error", count=1))
    async with start_worker(backends=[backend(simulator.url)]):
        msg = await nc.request(llm(node_id), b'{"prompt": "hi"}', timeout=5)
    response = decode_response(msg.data)
    assert response.error is not None
    assert response.error.code == "BACKEND_ERROR"
    assert msg.headers is not None
    assert msg.headers["Nats-Service-Error-Code"] == "502"


async def test_runtime_gone_after_discovery_is_backend_unavailable(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    async with (
        Simulator(models=[SimModel("llama3:8b")]) as sim,
        start_worker(backends=[backend(sim.url)]) as worker,
    ):
        assert "llama3:8b" in worker.catalog.models
        await sim.stop()
        response = await ask(nc, llm(node_id), {"prompt": "hi"})
    assert response.error is not None
    assert response.error.code == "BACKEND_UNAVAILABLE"
    assert response.error.retryable is True


async def test_no_reachable_runtime_means_backend_unavailable_not_a_hang(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend("http://127.0.0.1:9")]):
        response = await ask(nc, llm(node_id), {"prompt": "hi"})
    assert response.error is not None
    assert response.error.code == "BACKEND_UNAVAILABLE"


async def test_message_without_reply_subject_is_dropped_and_worker_continues(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)]):
        await nc.publish(llm(node_id), b'{"prompt": "fire and forget"}')
        response = await ask(nc, llm(node_id), {"prompt": "hi"})
    assert response.status == "ok"
    assert simulator.calls["llama3:8b"] == 1


async def test_metrics_endpoint_counts_jobs_by_outcome(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    async with start_worker(backends=[backend(simulator.url)], metrics_port=0) as worker:
        await ask(nc, llm(node_id), {"prompt": "hi"})
        await ask(nc, llm(node_id), {"prompt": "hi", "timeout_ms": 0})
        assert worker.metrics_port is not None
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{worker.metrics_port}/metrics")).text
    assert 'inferbus_worker_jobs_total{model="llama3:8b",status="ok",type="llm"} 1.0' in text
    assert 'status="DEADLINE_EXCEEDED",type="llm"} 1.0' in text
    assert 'inferbus_worker_inflight{kind="llm"} 0.0' in text


async def test_drain_answers_every_job_already_delivered(
    nc: NatsClient, simulator: Simulator, start_worker: WorkerFactory, node_id: str
) -> None:
    replies: list[bytes] = []
    inbox = nc.new_inbox()

    async def collect(msg: Msg) -> None:
        replies.append(msg.data)

    await nc.subscribe(inbox, cb=collect)
    simulator.latency_ms = 50
    async with start_worker(
        backends=[backend(simulator.url)], limits={"llm_concurrency": 8}
    ) as worker:
        for i in range(200):
            await nc.publish(llm(node_id), f'{{"prompt": "job {i}"}}'.encode(), reply=inbox)
        await flush_interest(nc)  # every job has reached the server (and so the worker)
        await worker.drain()
    await until(lambda: len(replies) >= 200)
    answers = [decode_response(data) for data in replies]
    assert len(answers) == 200
    outcomes = {a.error.code if a.error else a.status for a in answers}
    assert outcomes <= {"ok", "BUSY"}
    assert "ok" in outcomes
