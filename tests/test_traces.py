"""Traces end to end: a client's W3C trace context through the router, NATS and a worker to
the runtime, and the spans both processes export to a real OTLP/HTTP receiver on loopback.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.subjects import Subjects
from services.tracing import Span, TelemetrySettings, Tracing, carrier_of
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tools.simulator import Simulator


def traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with OtlpReceiver() as running:
        yield running


def by_name(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans if span.trace_id == trace_id}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_one_request_is_one_trace_across_router_worker_and_runtime(
    simulator: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    receiver: OtlpReceiver,
    nc: NatsClient,
    node_id: str,
    stream: bool,
) -> None:
    telemetry = {"otlp_endpoint": receiver.url, "export_delay_ms": 50}
    sent, trace_id, client_span = traceparent()
    async with (
        start_worker(backends=[backend(simulator.url)], telemetry=telemetry),
        start_router(telemetry=telemetry) as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        # A copy of every job the router sends the node (no queue group: not a responder).
        copies: list[Msg] = []
        watcher = await nc.subscribe(Subjects().job(node_id, "llm"), cb=_keep(copies))
        await nc.flush()
        headers = {"traceparent": sent, "tracestate": "vendor=abc"}
        answer = await http.post("/v1/chat/completions", json=chat(stream=stream), headers=headers)
        assert answer.status_code == 200
        await watcher.unsubscribe()
    # Both processes flush what is left when they stop.
    await receiver.until(lambda spans: len(by_name(spans, trace_id)) >= 5, 15)
    spans = by_name(receiver.spans, trace_id)
    request, attempt = spans["request"], spans["attempt"]
    job, admit, call = spans["job"], spans["admit"], spans["runtime call"]
    assert (request.service, job.service) == ("inferbus-router", "inferbus-worker")
    assert request.parent_id == client_span
    assert attempt.parent_id == request.span_id
    assert job.parent_id == attempt.span_id  # linked across NATS
    assert admit.parent_id == job.span_id
    assert call.parent_id == job.span_id
    assert attempt.attributes["inferbus.node"] == node_id
    assert attempt.attributes["inferbus.outcome"] == "ok"
    assert request.attributes["inferbus.outcome"] == "ok"
    assert admit.attributes["inferbus.admitted"] == "run"
    assert call.attributes["inferbus.tokens.completion"] == 8
    assert ("inferbus.ttft_ms" in call.attributes) is stream
    # The runtime got the context of the worker's runtime call, in the same trace.
    assert f"00-{trace_id}-{call.span_id}-01" in simulator.traceparents
    # The job on the bus carried the attempt's context, in its headers and its body.
    assert len(copies) == 1
    carried = f"00-{trace_id}-{attempt.span_id}-01"
    assert copies[0].headers is not None
    assert copies[0].headers["traceparent"] == carried
    assert copies[0].headers["tracestate"] == "vendor=abc"
    assert json.loads(copies[0].data)["trace"] == carried


def _keep(into: list[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def keep(msg: Msg) -> None:
        into.append(msg)

    return keep


async def test_a_request_without_context_starts_a_trace_at_the_router(
    simulator: Simulator,
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    receiver: OtlpReceiver,
) -> None:
    telemetry = {"otlp_endpoint": receiver.url, "export_delay_ms": 50}
    async with (
        start_worker(backends=[backend(simulator.url)], telemetry=telemetry),
        start_router(telemetry=telemetry) as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
    await receiver.until(lambda spans: any(s.name == "runtime call" for s in spans), 15)
    roots = [span for span in receiver.spans if span.name == "request"]
    assert len(roots) == 1
    assert roots[0].parent_id == ""
    trace_id = roots[0].trace_id
    assert {span.trace_id for span in receiver.spans} == {trace_id}
    assert any(seen.split("-")[1] == trace_id for seen in simulator.traceparents)


async def test_with_tracing_off_the_callers_context_still_reaches_the_runtime(
    simulator: Simulator, start_worker: WorkerFactory, start_router: RouterFactory
) -> None:
    sent, _, _ = traceparent()
    async with (
        start_worker(backends=[backend(simulator.url)]),
        start_router() as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        answer = await http.post("/v1/chat/completions", json=chat(), headers={"traceparent": sent})
        assert answer.status_code == 200
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
    # Passed on as sent (no spans of ours in between); a request without one sends none.
    assert simulator.traceparents == [sent]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Traceparent": "00-ab-cd-01"}, {"traceparent": "00-ab-cd-01"}),
        ({"tracestate": "a=b"}, None),  # a state without a parent is no context
        (
            {"traceparent": "00-ab-cd-01", "tracestate": "a=b", "x": "y"},
            {"traceparent": "00-ab-cd-01", "tracestate": "a=b"},
        ),
    ],
)
def test_the_trace_context_is_picked_out_of_any_headers(
    headers: dict[str, str], expected: dict[str, str] | None
) -> None:
    assert carrier_of(headers) == expected


def test_off_spans_pass_the_callers_context_on_and_start_none() -> None:
    tracing = Tracing(TelemetrySettings(), service="test")
    assert not tracing.enabled
    sent, _, _ = traceparent()
    with tracing.span("outer", parent={"traceparent": sent}) as outer:
        assert tracing.span("inner").headers() == {"traceparent": sent}
        assert tracing.span("child", parent=outer).headers() == {"traceparent": sent}
    assert tracing.span("after").headers() == {}
    assert type(tracing.span("any")) is Span  # nothing recorded, nothing exported


async def test_a_wait_measured_elsewhere_is_a_span_of_its_own_inside_the_current_one(
    receiver: OtlpReceiver,
) -> None:
    tracing = Tracing(
        TelemetrySettings(otlp_endpoint=receiver.url, export_delay_ms=50), service="test"
    )
    with tracing.span("request") as request:
        tracing.past("queue wait", 0.25, {"inferbus.tenant": "team-a"})
        parent = request.headers()["traceparent"].split("-")[2]
    await asyncio.to_thread(tracing.shutdown)
    await receiver.until(lambda spans: len(spans) == 2, 10)
    waited = next(span for span in receiver.spans if span.name == "queue wait")
    assert waited.parent_id == parent
    assert waited.attributes["inferbus.tenant"] == "team-a"
    assert waited.duration_ns == 250_000_000
    Tracing(None, service="off").past("queue wait", 1.0, {})  # off: nothing, no error


async def test_a_call_that_waits_in_line_has_a_queue_wait_span_and_its_row_says_so(
    start_worker: WorkerFactory,
    start_router: RouterFactory,
    receiver: OtlpReceiver,
) -> None:
    telemetry = {"otlp_endpoint": receiver.url, "export_delay_ms": 50}
    async with (
        Simulator(latency_ms=300, tokens=2) as slow,
        start_worker(
            backends=[backend(slow.url)],
            limits={"llm_concurrency": 1},
            heartbeat_s=30,
            telemetry=telemetry,
        ),
        start_router(telemetry=telemetry) as router,
        httpx.AsyncClient(base_url=router.url, timeout=30) as http,
    ):
        answers = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=chat(model="llama3.2:3b")) for _ in range(2))
        )
        assert [answer.status_code for answer in answers] == [200, 200]
        rows = router.live.snapshot()["requests"]
    assert max(row["queue_ms"] or 0 for row in rows) > 0  # the page shows the wait
    await receiver.until(lambda spans: any(s.name == "queue wait" for s in spans), 15)
    await receiver.until(lambda spans: sum(s.name == "request" for s in spans) == 2, 15)
    waits = [span for span in receiver.spans if span.name == "queue wait"]
    requests = {span.span_id: span for span in receiver.spans if span.name == "request"}
    assert len(waits) >= 1
    assert all(wait.parent_id in requests for wait in waits)
    assert max(wait.duration_ns for wait in waits) > 0
