"""The node's real timings on the wire: the runtime's split of its time (Ollama's metrics,
llama.cpp's `timings`), else the worker's own measurement of a stream's first piece;
nothing made up where neither exists."""

from __future__ import annotations

from typing import Any

import pytest
import uvloop
from nats.aio.client import Client as NatsClient

from services.runtimes import make_runtime, new_http_client
from services.runtimes.base import ChatCall, RuntimeTimings
from services.runtimes.calls import stream_within
from services.runtimes.ollama import timings_of
from services.runtimes.openai_compat import llamacpp_timings
from services.wire import Message
from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm, stream
from tools.simulator import LlamaServerTraits, SimModel, Simulator

JOB = {"model": "m:1b", "prompt": "hello"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"total_duration": 9_000_000}, None),
        (
            {"load_duration": 1_000_000, "prompt_eval_duration": 2_500_000, "eval_duration": 5},
            (1.0, 2.5, 5e-06),  # a few ns stay non-zero
        ),
        ({"eval_duration": "soon", "prompt_eval_duration": True}, None),
    ],
)
def test_ollama_metrics_become_milliseconds(
    body: dict[str, Any], expected: tuple[float, float, float] | None
) -> None:
    found = timings_of(body)
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert (found.load_ms, found.prompt_ms, found.eval_ms) == expected


@pytest.mark.parametrize(
    ("timings", "expected"),
    [
        (None, None),
        ({}, None),
        ({"prompt_ms": 12.5, "predicted_ms": 40.0, "prompt_n": 3}, (12.5, 40.0)),
        ({"prompt_ms": 0, "predicted_ms": 3}, (None, 3.0)),
    ],
)
def test_llamacpp_timings_become_the_split(
    timings: Any, expected: tuple[float | None, float | None] | None
) -> None:
    found = llamacpp_timings(timings)
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert (found.prompt_ms, found.eval_ms) == expected
    assert found.load_ms is None


@pytest.mark.parametrize(
    ("kind", "traits", "whole_split"),
    [
        ("ollama", None, True),  # Ollama's metrics
        ("llamacpp", LlamaServerTraits(), True),  # llama-server's `timings`
        ("vllm", None, False),  # nothing reported: a whole answer has no split
    ],
)
async def test_the_split_reaches_the_wire(
    nc: NatsClient,
    start_worker: WorkerFactory,
    node_id: str,
    kind: str,
    traits: LlamaServerTraits | None,
    whole_split: bool,
) -> None:
    async with (
        Simulator([SimModel("m:1b")], tokens=4, llama_server=traits) as sim,
        start_worker(backends=[backend(sim.url, kind=kind)]),
    ):
        whole = await ask(nc, llm(node_id), JOB)
        _chunks, streamed = await stream(nc, llm(node_id), {**JOB, "stream": True})
    assert whole.status == streamed.status == "ok"
    if whole_split:
        assert whole.timings.prompt_ms is not None
        assert whole.timings.eval_ms is not None
    else:
        assert whole.timings.prompt_ms is whole.timings.eval_ms is None
    # a stream always has one: the runtime's, or the worker's measurement
    assert streamed.timings.prompt_ms is not None
    assert streamed.timings.eval_ms is not None
    assert (whole.timings.load_ms is not None) is (kind == "ollama")
    assert whole.timings.total_ms >= whole.timings.backend_ms > 0


def test_a_streams_measured_split_is_finer_than_uvloops_millisecond_clock() -> None:
    """Workers run on uvloop, whose `loop.time()` ticks in whole milliseconds: a split
    measured with it is 0 ms for a fast stream, and Ollama's answer then has no
    `eval_duration`. Measured on a monotonic clock, a stream's split keeps its fraction."""

    async def streamed_splits() -> list[RuntimeTimings]:
        splits: list[RuntimeTimings] = []
        async with Simulator([SimModel("m:1b")], tokens=4) as sim, new_http_client() as http:
            runtime = make_runtime("vllm", sim.url, http)
            for _ in range(5):
                call = ChatCall("m:1b", [Message(content="hello")])
                reply = await stream_within(runtime, call, 10.0, on_delta=ignore)
                assert reply.timings is not None
                splits.append(reply.timings)
        return splits

    splits = uvloop.run(streamed_splits())
    # whole milliseconds in all five would be the loop's clock (a fraction of .000 in
    # each of five on a fine clock: about one chance in 10^15)
    assert any(split.eval_ms is not None and split.eval_ms % 1 for split in splits)
    assert all(split.eval_ms for split in splits)


async def ignore(_: str) -> None:
    return None
