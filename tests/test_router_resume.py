"""A node lost mid-answer: the stream goes on on another node, which continues the text
so far, and the client sees one stream with no repeated and no missing piece.

Worker processes in front of simulators that stream 200 deterministic pieces. The stream
starts on the victim, the only node; a second node joins; the victim is SIGKILLed,
SIGSTOPped or drained (SIGTERM, short grace) once the client has 50 pieces.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from router.service import RouterService
from services.bus import wait_for_worker
from services.nats_server import NatsServer
from tests.cloud_sims import PRIMARY
from tests.conftest import RouterFactory
from tests.jobs import llm, stream, until
from tests.test_router_cloud import SECRETS, cloud
from tests.worker_process import worker_process
from tools.simulator import Fault, SimModel, Simulator, expected_text, expected_thinking

MODEL = "story:7b"
QUESTION = "tell me a long story"
TOKENS = 200
CUT_AFTER = 50
WHOLE = expected_text(MODEL, QUESTION, TOKENS)
TOOL_MODEL = "qwen2.5:7b"  # a name that says it calls tools (vLLM's record cannot say)
THINKER = "qwen3:8b"  # thinks when asked (its /api/show says so)
SERVED = [SimModel(MODEL), SimModel(TOOL_MODEL), SimModel(THINKER, family="qwen3", thinking=True)]


@dataclass
class Scene:
    """The victim node streaming, its process, the router, and the second node to come."""

    victim: str
    other: str
    process: asyncio.subprocess.Process
    router: RouterService
    first: Simulator
    second: Simulator
    joins: Callable[..., AbstractAsyncContextManager[None]]

    def cut(self, how: signal.Signals = signal.SIGKILL) -> None:
        if self.process.returncode is None:
            self.process.send_signal(how)


@pytest.fixture
def scene(
    tmp_path: Path, nats_server: NatsServer, nc: Any, start_router: RouterFactory, node_id: str
) -> Callable[..., AbstractAsyncContextManager[Scene]]:
    @asynccontextmanager
    async def set_up(victim_interval_ms: int = 15, kind: str = "ollama") -> AsyncIterator[Scene]:
        victim, other = f"{node_id}-victim", f"{node_id}-other"
        async with (
            Simulator(models=SERVED, tokens=TOKENS, token_interval_ms=victim_interval_ms) as first,
            Simulator(models=SERVED, tokens=TOKENS, token_interval_ms=5) as second,
            worker_process(
                tmp_path, victim, nats_server.url, first.url, kind=kind, drain_grace_s=0.3
            ) as process,
        ):
            await wait_for_worker(nc, llm(victim))
            async with start_router() as router:
                await until(lambda: victim in router.fleet.nodes, timeout_s=10)

                @asynccontextmanager
                async def joins(
                    slots: int | None = None, other_kind: str | None = None
                ) -> AsyncIterator[None]:
                    async with worker_process(
                        tmp_path,
                        other,
                        nats_server.url,
                        second.url,
                        kind=other_kind or kind,
                        slots=slots,
                    ):
                        await wait_for_worker(nc, llm(other))
                        await until(lambda: other in router.fleet.nodes, timeout_s=10)
                        yield

                yield Scene(victim, other, process, router, first, second, joins)
                if process.returncode is None:
                    process.send_signal(signal.SIGCONT)

    return set_up


async def ndjson(
    scene: Scene, job: dict[str, Any], headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """An /infer stream started on the victim, cut after CUT_AFTER pieces: every line."""
    lines: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=scene.router.url, timeout=60) as http,
        http.stream("POST", "/infer", json=job, headers=headers) as response,
        scene.joins(),
    ):
        async for line in response.aiter_lines():
            lines.append(json.loads(line))
            if len(lines) == CUT_AFTER:
                scene.cut()
    return lines


@pytest.mark.parametrize(
    "how", [signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM], ids=["killed", "frozen", "drained"]
)
async def test_the_openai_client_streams_one_whole_answer_across_a_lost_node(
    scene: Callable[..., AbstractAsyncContextManager[Scene]], how: signal.Signals
) -> None:
    pieces: list[str] = []
    finish, usage = None, None
    async with scene() as s:
        client = openai.AsyncOpenAI(base_url=f"{s.router.url}/v1", api_key="x", max_retries=0)
        chunks = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
            timeout=60,
        )
        async with s.joins():
            async for chunk in chunks:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    pieces.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
                if sum(map(bool, pieces)) == CUT_AFTER:
                    s.cut(how)
        await client.close()
    assert "".join(pieces) == WHOLE
    assert sum(map(bool, pieces)) == TOKENS  # one piece each: none repeated, none lost
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == TOKENS


@pytest.mark.parametrize(
    ("fault", "code"),
    [("drop", "BACKEND_UNAVAILABLE"), ("error", "BACKEND_ERROR")],
    ids=["runtime-connection-cut", "runtime-error-event"],
)
async def test_a_stream_the_runtime_breaks_mid_answer_resumes_too(
    scene: Callable[..., AbstractAsyncContextManager[Scene]], fault: str, code: str
) -> None:
    """The worker lives on; its runtime cuts the stream (or sends an error event) after
    50 pieces, 60 ms apart, by when the other node is in: a failure of the node's own."""
    job = {"prompt": QUESTION, "model": MODEL, "stream": True}
    lines: list[dict[str, Any]] = []
    async with scene(victim_interval_ms=60) as s:
        s.first.set_fault(MODEL, Fault(fault, after_chunks=CUT_AFTER))
        async with (
            httpx.AsyncClient(base_url=s.router.url, timeout=60) as http,
            http.stream("POST", "/infer", json=job) as response,
            s.joins(),
        ):
            lines = [json.loads(line) async for line in response.aiter_lines()]
    final = lines[-1]
    assert final["route"]["resumed"] == 1, final
    assert final["route"]["attempts"][0]["outcome"] == code
    assert final["route"]["attempts"][0]["resumed_after"] == CUT_AFTER
    assert "".join(line["delta"] for line in lines[:-1]) == WHOLE


async def test_the_route_report_says_where_the_stream_broke_and_went_on(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    job = {"prompt": QUESTION, "model": MODEL, "stream": True, "idempotency_key": "k1"}
    async with scene() as s:
        lines = await ndjson(s, job)
        async with httpx.AsyncClient(base_url=s.router.url, timeout=60) as http:
            replayed = (await http.post("/infer", json={**job, "stream": False})).json()
    final = lines[-1]
    assert "".join(line["delta"] for line in lines[:-1]) == WHOLE
    assert [line["seq"] for line in lines[:-1]] == list(range(1, TOKENS + 1))
    route = final["route"]
    assert route["resumed"] == 1
    assert [a["node"] for a in route["attempts"]] == [s.victim, s.other]
    assert CUT_AFTER <= route["attempts"][0]["resumed_after"] < TOKENS
    assert route["attempts"][0]["outcome"] == "BACKEND_UNAVAILABLE"
    assert route["node"] == s.other
    # every attempt's tokens, summed: the question's 5 words twice, the second time with
    # the text so far (one word a piece) in front of what it generated
    cut = route["attempts"][0]["resumed_after"]
    by_attempt = [attempt["usage"] for attempt in route["attempts"]]
    assert by_attempt == [
        {"prompt_tokens": 5, "completion_tokens": cut},
        {"prompt_tokens": 5 + cut, "completion_tokens": TOKENS - cut},
    ]
    assert final["result"]["usage"] == {"prompt_tokens": 10 + cut, "completion_tokens": TOKENS}
    # the key keeps the whole answer: a duplicate gets all of it, not the continuation
    assert replayed["cached"] is True
    assert replayed["result"]["text"] == WHOLE


async def test_a_node_that_cannot_continue_is_never_chosen_to_resume(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    """The only other node serves the model from LM Studio, whose record lacks `continue`:
    it would answer the prefill as a new turn, so the stream ends with the error."""
    job = {"prompt": QUESTION, "model": MODEL, "stream": True}
    lines: list[dict[str, Any]] = []
    async with (
        scene() as s,
        httpx.AsyncClient(base_url=s.router.url, timeout=60) as http,
        http.stream("POST", "/infer", json=job) as response,
        s.joins(other_kind="lmstudio"),
    ):
        async for line in response.aiter_lines():
            lines.append(json.loads(line))
            if len(lines) == CUT_AFTER:
                s.cut()
        other_record = s.router.fleet.nodes.get(s.other)
    assert lines[-1]["error"]["code"] == "BACKEND_UNAVAILABLE", lines[-1]
    assert other_record is not None  # it was there, and not chosen
    assert s.second.calls.get(MODEL, 0) == 0


async def test_a_duplicate_waiting_on_a_resumed_stream_gets_the_whole_text(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    """A duplicate of the key sent while the stream runs waits for it (one runtime call
    per attempt, none for the duplicate) and gets the whole answer, not the continuation."""
    job = {"prompt": QUESTION, "model": MODEL, "stream": True, "idempotency_key": "k-wait"}
    lines: list[dict[str, Any]] = []
    async with (
        scene() as s,
        httpx.AsyncClient(base_url=s.router.url, timeout=60) as http,
        http.stream("POST", "/infer", json=job) as response,
        s.joins(),
    ):
        duplicate = None
        async for line in response.aiter_lines():
            lines.append(json.loads(line))
            if len(lines) == 10:
                whole_job = {**job, "stream": False}
                duplicate = asyncio.ensure_future(http.post("/infer", json=whole_job))
            if len(lines) == CUT_AFTER:
                s.cut()
        assert duplicate is not None
        waited = (await duplicate).json()
        calls_on_the_other = s.second.calls.get(MODEL, 0)
    assert lines[-1]["route"]["resumed"] == 1, lines[-1]
    assert waited["status"] == "ok", waited
    assert waited["result"]["text"] == WHOLE
    assert calls_on_the_other == 1  # the continuation only: the duplicate made no call


async def test_a_caller_may_ask_for_the_error_instead(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    job = {"prompt": QUESTION, "model": MODEL, "stream": True}
    async with scene() as s:
        lines = await ndjson(s, job, headers={"x-inferbus-resume": "off"})
    assert lines[-1]["error"]["code"] == "BACKEND_UNAVAILABLE"
    assert len(lines) < TOKENS
    assert s.second.calls.get(MODEL, 0) == 0


async def chat_error(chunks: Any, each: Callable[[Any], None]) -> openai.APIError | None:
    """Read an OpenAI client's stream to its end; the error that ended it, if one did."""
    try:
        async for chunk in chunks:
            each(chunk)
    except openai.APIError as error:
        return error
    return None


async def test_the_openai_client_may_refuse_resume_in_stream_options(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    pieces = 0
    options: Any = {"include_usage": True, "resume": False}  # ours: beyond OpenAI's keys
    async with scene() as s:
        client = openai.AsyncOpenAI(base_url=f"{s.router.url}/v1", api_key="x", max_retries=0)
        chunks = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options=options,
            timeout=60,
        )
        async with s.joins():

            def count(chunk: Any) -> None:
                nonlocal pieces
                pieces += sum(bool(choice.delta.content) for choice in chunk.choices)
                if pieces == CUT_AFTER:
                    s.cut()

            error = await chat_error(chunks, count)
        await client.close()
    assert error is not None, pieces
    assert error.code == "BACKEND_UNAVAILABLE"
    assert CUT_AFTER <= pieces < TOKENS
    assert s.second.calls.get(MODEL, 0) == 0


async def test_a_resumed_stream_keeps_to_the_callers_token_cap(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    cap = 120  # 40 ms a piece: the victim is still streaming when the other node is in
    job = {"prompt": QUESTION, "model": MODEL, "stream": True, "max_tokens": cap}
    async with scene(victim_interval_ms=40) as s:
        lines = await ndjson(s, job)
    final = lines[-1]
    assert final["route"]["resumed"] == 1, final
    assert "".join(line["delta"] for line in lines[:-1]) == expected_text(MODEL, QUESTION, cap)
    assert final["result"]["finish_reason"] == "length"
    assert final["result"]["usage"]["completion_tokens"] == cap


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"term": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["term"],
            },
        },
    }
]


async def test_a_tool_call_cut_mid_arguments_is_never_presented_as_complete(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    """The victim (vLLM's wire: calls stream as deltas) streams the call's head, then its
    arguments in two halves, 3 s apart (the other node joins meanwhile: the client reads
    only once it is there); the victim is killed once the client has the first half. The
    client holds part of a call it cannot be told to forget, so the stream ends with the
    error: no finish reason, no call restarted elsewhere."""
    arguments, finishes = "", list[str]()
    async with scene(victim_interval_ms=3000, kind="vllm") as s:
        client = openai.AsyncOpenAI(base_url=f"{s.router.url}/v1", api_key="x", max_retries=0)
        chunks = await client.chat.completions.create(
            model=TOOL_MODEL,
            messages=[{"role": "user", "content": "please lookup nats"}],
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
            timeout=60,
        )
        async with s.joins():

            def note(chunk: Any) -> None:
                nonlocal arguments
                for choice in chunk.choices:
                    for call in choice.delta.tool_calls or ():
                        arguments += (call.function.arguments or "") if call.function else ""
                    if choice.finish_reason:
                        finishes.append(choice.finish_reason)
                if arguments:
                    s.cut()

            error = await chat_error(chunks, note)
        await client.close()
    assert error is not None, (arguments, finishes)
    assert error.code == "BACKEND_UNAVAILABLE"
    assert arguments  # the client had part of the call ...
    with pytest.raises(json.JSONDecodeError):
        json.loads(arguments)  # ... only part of it ...
    assert finishes == []  # ... and was never told it was complete
    assert s.second.calls.get(TOOL_MODEL, 0) == 0


async def test_a_stream_resumes_on_its_own_model_only_never_on_a_fallback(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Any,
    start_router: RouterFactory,
    node_id: str,
    alpha: Simulator,
    beta: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fleet model falls back to a cloud model (which would answer a whole request in
    its place); no other node serves the fleet's model when the victim dies: the stream
    ends with the error rather than go on in another model's words."""
    for name, secret in SECRETS.items():
        monkeypatch.setenv(name, secret)
    victim = f"{node_id}-victim"
    job = {"prompt": QUESTION, "model": MODEL, "stream": True}
    lines: list[dict[str, Any]] = []
    async with (
        Simulator(models=SERVED, tokens=TOKENS, token_interval_ms=15) as first,
        worker_process(tmp_path, victim, nats_server.url, first.url) as process,
    ):
        await wait_for_worker(nc, llm(victim))
        async with (
            start_router(**cloud(alpha, beta, fallbacks=[PRIMARY])) as router,
            httpx.AsyncClient(base_url=router.url, timeout=60) as http,
        ):
            await until(lambda: victim in router.fleet.nodes, timeout_s=10)
            async with http.stream("POST", "/infer", json=job) as response:
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == CUT_AFTER:
                        process.kill()
    assert lines[-1]["error"]["code"] == "BACKEND_UNAVAILABLE", lines[-1]
    assert (
        "".join(line.get("delta", "") for line in lines[:-1])
        == WHOLE[: len("".join(line.get("delta", "") for line in lines[:-1]))]
    )
    assert alpha.key_calls == {}  # the fallback model was never asked to continue


async def test_a_resumed_stream_waits_in_line_while_the_nodes_that_can_continue_are_busy(
    scene: Callable[..., AbstractAsyncContextManager[Scene]], nc: Any
) -> None:
    """The only other node has one slot, taken by a job sent to it by hand: the stream
    waits for that slot (a resumed request needs a slot like any other), then goes on."""
    job = {"prompt": QUESTION, "model": MODEL, "stream": True}
    lines: list[dict[str, Any]] = []
    async with (
        scene() as s,
        httpx.AsyncClient(base_url=s.router.url, timeout=60) as http,
        http.stream("POST", "/infer", json=job) as response,
        s.joins(slots=1),
    ):
        block = {"prompt": "block", "model": MODEL, "stream": True}
        blocker = asyncio.ensure_future(stream(nc, llm(s.other), block))
        await until(lambda: s.second.open_connections >= 1, timeout_s=10)
        async for line in response.aiter_lines():
            lines.append(json.loads(line))
            if len(lines) == CUT_AFTER:
                s.cut()
        await blocker
    final = lines[-1]
    assert "".join(line["delta"] for line in lines[:-1]) == WHOLE
    assert final["route"]["resumed"] == 1, final
    assert final["route"]["node"] == s.other
    assert s.second.peak_connections == 1  # the stream went on only once the slot was free
    assert final["route"]["queue_ms"] > 0  # it waited in line for that slot


async def test_an_anthropic_stream_resumes_the_same_way(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    pieces: list[str] = []
    async with scene() as s:
        client = anthropic.AsyncAnthropic(base_url=s.router.url, api_key="x", max_retries=0)
        async with (
            client.messages.stream(
                model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": QUESTION}]
            ) as answer,
            s.joins(),
        ):
            async for text in answer.text_stream:
                pieces.append(text)
                if len(pieces) == CUT_AFTER:
                    s.cut()
            message = await answer.get_final_message()
        await client.close()
    assert "".join(pieces) == WHOLE
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == TOKENS


async def test_an_ollama_stream_resumes_the_same_way(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    pieces: list[str] = []
    last = None
    async with scene() as s, ollama.AsyncClient(host=s.router.url) as client:
        parts = await client.chat(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        async with s.joins():
            async for part in parts:
                pieces.append(part.message.content or "")
                last = part
                if len(pieces) == CUT_AFTER:
                    s.cut()
    assert "".join(pieces) == WHOLE
    assert last is not None
    assert last.done
    assert last.done_reason == "stop"
    assert last.eval_count == TOKENS


async def test_a_stream_that_thought_resumes_once_its_text_began_with_the_reasoning_once(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    thoughts: list[str] = []
    text: list[str] = []
    async with scene() as s, ollama.AsyncClient(host=s.router.url) as client:
        parts = await client.chat(
            model=THINKER,
            messages=[{"role": "user", "content": QUESTION}],
            think=True,
            stream=True,
        )
        async with s.joins():
            async for part in parts:
                if part.message.thinking:
                    thoughts.append(part.message.thinking)
                text.append(part.message.content or "")
                if len(text) == CUT_AFTER:  # the reasoning's pieces, then the answer's
                    s.cut()
    assert "".join(thoughts) == expected_thinking(THINKER, QUESTION)  # once, not twice
    assert "".join(text) == expected_text(THINKER, QUESTION, TOKENS)


async def test_a_node_lost_while_the_model_still_thinks_ends_the_stream_with_the_error(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    """Reasoning 2 s a piece: the node is killed after the first, with another node in.
    No resume: the other node would think anew and the client see two lines of thought."""
    job = {"prompt": QUESTION, "model": THINKER, "stream": True, "extra": {"think": True}}
    lines: list[dict[str, Any]] = []
    async with (
        scene(victim_interval_ms=2000) as s,
        httpx.AsyncClient(base_url=s.router.url, timeout=60) as http,
        http.stream("POST", "/infer", json=job) as response,
        s.joins(),
    ):
        async for line in response.aiter_lines():
            lines.append(json.loads(line))
            if len(lines) == 1:
                s.cut()
    *pieces, final = lines
    assert final["status"] == "error", final
    assert final["error"]["code"] == "BACKEND_UNAVAILABLE"
    assert final["route"]["resumed"] == 0
    assert all(piece["delta"] == "" and piece["thinking"] for piece in pieces)
    assert len(pieces) < 4  # cut mid-thought


async def streamed_text(
    http: httpx.AsyncClient, job: dict[str, Any]
) -> tuple[str, float, int, dict[str, Any]]:
    """One /infer stream: its text, the longest pause between two pieces, how often it
    resumed, and its last line (the answer, or the error that ended it)."""
    text, longest, last = "", 0.0, None
    loop = asyncio.get_running_loop()
    final: dict[str, Any] = {}
    async with http.stream("POST", "/infer", json=job) as response:
        async for line in response.aiter_lines():
            event = json.loads(line)
            now = loop.time()
            if "delta" in event:
                text += event["delta"]
                longest = max(longest, now - last) if last is not None else 0.0
                last = now
            else:
                final = event
    return text, longest, final.get("route", {}).get("resumed", 0), final


async def test_a_hundred_streams_all_complete_when_one_of_three_nodes_dies(
    tmp_path: Path, nats_server: NatsServer, nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    nodes = [f"{node_id}-{n}" for n in range(3)]
    async with (
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=10) as a,
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=10) as b,
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=10) as c,
        worker_process(tmp_path, nodes[0], nats_server.url, a.url, slots=64) as victim,
        worker_process(tmp_path, nodes[1], nats_server.url, b.url, slots=64),
        worker_process(tmp_path, nodes[2], nats_server.url, c.url, slots=64),
    ):
        for node in nodes:
            await wait_for_worker(nc, llm(node))
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with (
            start_router() as router,
            httpx.AsyncClient(base_url=router.url, timeout=90, limits=limits) as http,
        ):
            await until(lambda: all(node in router.fleet.nodes for node in nodes), timeout_s=10)
            prompts = [f"{QUESTION} {n}" for n in range(100)]
            jobs = [
                {"prompt": prompt, "model": MODEL, "stream": True, "timeout_ms": 80_000}
                for prompt in prompts
            ]
            async with asyncio.timeout(150):  # a bounded run
                streams = [asyncio.ensure_future(streamed_text(http, job)) for job in jobs]
                await until(lambda: a.open_connections >= 5, timeout_s=30)
                await asyncio.sleep(0.3)  # the victim's streams are under way
                victim.send_signal(signal.SIGKILL)
                results = await asyncio.gather(*streams)
    errors = [final for _, _, _, final in results if final.get("status") != "ok"]
    assert errors == []
    for prompt, (text, _, _, _) in zip(prompts, results, strict=True):
        assert text == expected_text(MODEL, prompt, TOKENS)
    seams = sorted(pause for _, pause, times, _ in results if times)
    assert seams, "the killed node held streams, so some resumed"
    p99 = seams[min(len(seams) - 1, round(0.99 * (len(seams) - 1)))]
    print(
        f"\n100 of 100 streams complete, 0 errors; {len(seams)} resumed; the pause at the "
        f"seam: p50 {seams[len(seams) // 2] * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {seams[-1] * 1000:.0f} ms"
    )


async def test_a_templated_generate_stream_ends_with_the_nodes_error_not_a_refusal(
    scene: Callable[..., AbstractAsyncContextManager[Scene]],
) -> None:
    """A prompt with its own template renders one prompt, never a continued answer: a
    stream of one whose node is lost ends with the node's error (no node can go on)."""
    pieces: list[str] = []
    error: ollama.ResponseError | None = None
    async with scene() as s, ollama.AsyncClient(host=s.router.url) as client:
        parts = await client.generate(
            model=MODEL, prompt=QUESTION, template="Q: {{ .Prompt }}\nA:", stream=True
        )
        pieces.append((await anext(parts)).response)  # on the victim, the only node
        async with s.joins():
            try:
                async for part in parts:
                    pieces.append(part.response)
                    if len(pieces) == CUT_AFTER:
                        s.cut()
            except ollama.ResponseError as raised:
                error = raised
    assert error is not None, len(pieces)
    assert "template" not in error.error, error.error
    assert CUT_AFTER <= len(pieces) < TOKENS
