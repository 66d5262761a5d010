"""A node lost mid-answer: the stream goes on on another node, which continues the text
so far, and the client sees one stream with no repeated and no missing piece.

Worker processes in front of simulators that stream 200 deterministic pieces; the node
holding the stream is SIGKILLed, SIGSTOPped or drained (SIGTERM, short grace) after 50.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from services.bus import wait_for_worker
from services.nats_server import NatsServer
from tests.conftest import RouterFactory
from tests.jobs import llm, stream, until
from tools.simulator import SimModel, Simulator, expected_text

ROOT = Path(__file__).resolve().parent.parent
MODEL = "story:7b"
QUESTION = "tell me a long story"
TOKENS = 200
CUT_AFTER = 50


@asynccontextmanager
async def worker_process(
    tmp_path: Path, node: str, nats_url: str, sim_url: str, slots: int = 4, kind: str = "ollama"
) -> AsyncIterator[asyncio.subprocess.Process]:
    config = tmp_path / f"{node}.toml"
    config.write_text(
        f'node_id = "{node}"\nnats_url = "{nats_url}"\nheartbeat_s = 10\ndrain_grace_s = 0.3\n'
        f"[limits]\nllm_concurrency = {slots}\n"
        f'[[backends]]\nkind = "{kind}"\nurl = "{sim_url}"\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node_worker", "--config", str(config), "--log-level", "WARNING",
        cwd=ROOT, env=os.environ.copy(),
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        await process.wait()


HOW = pytest.mark.parametrize(
    "how", [signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM], ids=["killed", "frozen", "drained"]
)


@HOW
async def test_the_openai_client_streams_one_whole_answer_across_a_lost_node(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: Any,
    start_router: RouterFactory,
    node_id: str,
    how: signal.Signals,
) -> None:
    victim, other = f"{node_id}-victim", f"{node_id}-other"
    async with (
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=15) as first,
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=1) as second,
        worker_process(tmp_path, victim, nats_server.url, first.url) as process,
    ):
        await wait_for_worker(nc, llm(victim))
        async with start_router() as router:
            await until(lambda: victim in router.fleet.nodes, timeout_s=10)
            client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": QUESTION}],
                stream=True,
                stream_options={"include_usage": True},
                timeout=60,
            )
            pieces: list[str] = []
            finish, usage = None, None
            async with worker_process(tmp_path, other, nats_server.url, second.url):
                await wait_for_worker(nc, llm(other))
                await until(lambda: other in router.fleet.nodes, timeout_s=10)
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.delta.content:
                            pieces.append(choice.delta.content)
                        finish = choice.finish_reason or finish
                    if len(pieces) == CUT_AFTER and process.returncode is None:
                        process.send_signal(how)
            await client.close()
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
    assert "".join(pieces) == expected_text(MODEL, QUESTION, TOKENS)
    assert len(pieces) == TOKENS  # one piece each: none repeated at the seam, none lost
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == TOKENS


async def test_the_route_report_says_where_the_stream_broke_and_went_on(
    tmp_path: Path, nats_server: NatsServer, nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    victim, other = f"{node_id}-victim", f"{node_id}-other"
    async with (
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=15) as first,
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=1) as second,
        worker_process(tmp_path, victim, nats_server.url, first.url) as process,
    ):
        await wait_for_worker(nc, llm(victim))
        async with (
            start_router() as router,
            httpx.AsyncClient(base_url=router.url, timeout=60) as http,
        ):
            await until(lambda: victim in router.fleet.nodes, timeout_s=10)
            job = {"prompt": QUESTION, "model": MODEL, "stream": True, "idempotency_key": "k1"}
            lines: list[dict[str, Any]] = []
            async with (
                http.stream("POST", "/infer", json=job) as response,
                worker_process(tmp_path, other, nats_server.url, second.url),
            ):
                await wait_for_worker(nc, llm(other))
                await until(lambda: other in router.fleet.nodes, timeout_s=10)
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == CUT_AFTER:
                        process.send_signal(signal.SIGKILL)
                replayed = (await http.post("/infer", json={**job, "stream": False})).json()
    final = lines[-1]
    deltas = [line["delta"] for line in lines[:-1]]
    whole = expected_text(MODEL, QUESTION, TOKENS)
    assert "".join(deltas) == whole
    assert [line["seq"] for line in lines[:-1]] == list(range(1, TOKENS + 1))
    route = final["route"]
    assert route["resumed"] == 1
    assert [a["node"] for a in route["attempts"]] == [victim, other]
    assert CUT_AFTER <= route["attempts"][0]["resumed_after"] < TOKENS
    assert route["attempts"][0]["outcome"] == "BACKEND_UNAVAILABLE"
    assert route["node"] == other
    assert final["result"]["usage"]["completion_tokens"] == TOKENS
    # the key keeps the whole answer: a duplicate gets all of it, not the continuation
    assert replayed["cached"] is True
    assert replayed["result"]["text"] == whole


async def test_a_caller_may_ask_for_the_error_instead(
    tmp_path: Path, nats_server: NatsServer, nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    victim, other = f"{node_id}-victim", f"{node_id}-other"
    async with (
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=15) as first,
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=1) as second,
        worker_process(tmp_path, victim, nats_server.url, first.url) as process,
    ):
        await wait_for_worker(nc, llm(victim))
        async with (
            start_router() as router,
            httpx.AsyncClient(base_url=router.url, timeout=60) as http,
        ):
            await until(lambda: victim in router.fleet.nodes, timeout_s=10)
            job = {"prompt": QUESTION, "model": MODEL, "stream": True}
            lines: list[dict[str, Any]] = []
            headers = {"x-inferbus-resume": "off"}
            async with (
                http.stream("POST", "/infer", json=job, headers=headers) as response,
                worker_process(tmp_path, other, nats_server.url, second.url),
            ):
                await wait_for_worker(nc, llm(other))
                await until(lambda: other in router.fleet.nodes, timeout_s=10)
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == CUT_AFTER:
                        process.send_signal(signal.SIGKILL)
    assert lines[-1]["error"]["code"] == "BACKEND_UNAVAILABLE"
    assert len(lines) < TOKENS
    assert second.calls.get(MODEL, 0) == 0


async def streamed_text(http: httpx.AsyncClient, job: dict[str, Any]) -> tuple[str, float, int]:
    """One /infer stream: its text, the longest pause between two pieces, how it resumed."""
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
    assert final.get("status") == "ok", final
    return text, longest, final["route"]["resumed"]


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
        limits = {"max_connections": 200, "max_keepalive_connections": 200}
        async with (
            start_router() as router,
            httpx.AsyncClient(
                base_url=router.url, timeout=90, limits=httpx.Limits(**limits)
            ) as http,
        ):
            await until(lambda: all(node in router.fleet.nodes for node in nodes), timeout_s=10)
            prompts = [f"{QUESTION} {n}" for n in range(100)]
            jobs = [
                {"prompt": prompt, "model": MODEL, "stream": True, "timeout_ms": 80_000}
                for prompt in prompts
            ]
            streams = [asyncio.ensure_future(streamed_text(http, job)) for job in jobs]
            await until(lambda: a.open_connections >= 5, timeout_s=30)
            await asyncio.sleep(0.3)  # the victim's streams are under way
            victim.send_signal(signal.SIGKILL)
            results = await asyncio.gather(*streams)
    for prompt, (text, _, _) in zip(prompts, results, strict=True):
        assert text == expected_text(MODEL, prompt, TOKENS)
    resumed = sorted(pause for _, pause, times in results if times)
    assert resumed, "the killed node held streams, so some resumed"
    print(
        f"\n{len(resumed)} of 100 streams resumed; the pause at the seam: "
        f"p50 {resumed[len(resumed) // 2] * 1000:.0f} ms, max {resumed[-1] * 1000:.0f} ms"
    )


async def test_a_resumed_stream_waits_in_line_while_the_nodes_that_can_continue_are_busy(
    tmp_path: Path, nats_server: NatsServer, nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    """The only other node has one slot, taken by a job sent to it by hand: the stream
    waits for that slot (a resumed request needs a slot like any other), then goes on."""
    victim, other = f"{node_id}-victim", f"{node_id}-other"
    async with (
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=15) as first,
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=5) as second,
        worker_process(tmp_path, victim, nats_server.url, first.url) as process,
    ):
        await wait_for_worker(nc, llm(victim))
        async with (
            start_router() as router,
            httpx.AsyncClient(base_url=router.url, timeout=60) as http,
        ):
            await until(lambda: victim in router.fleet.nodes, timeout_s=10)
            job = {"prompt": QUESTION, "model": MODEL, "stream": True}
            lines: list[dict[str, Any]] = []
            async with (
                http.stream("POST", "/infer", json=job) as response,
                worker_process(tmp_path, other, nats_server.url, second.url, slots=1),
            ):
                await wait_for_worker(nc, llm(other))
                await until(lambda: other in router.fleet.nodes, timeout_s=10)
                block = {"prompt": "block", "model": MODEL, "stream": True}
                blocker = asyncio.ensure_future(stream(nc, llm(other), block))
                await until(lambda: second.open_connections >= 1, timeout_s=10)
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == CUT_AFTER:
                        process.send_signal(signal.SIGKILL)
                await blocker
    final = lines[-1]
    assert "".join(line["delta"] for line in lines[:-1]) == expected_text(MODEL, QUESTION, TOKENS)
    assert final["route"]["resumed"] == 1
    assert final["route"]["node"] == other
    assert second.peak_connections == 1  # the stream went on only once the slot was free
    assert final["route"]["queue_ms"] > 0  # it waited in line for that slot


async def test_an_anthropic_stream_resumes_the_same_way(
    tmp_path: Path, nats_server: NatsServer, nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    victim, other = f"{node_id}-victim", f"{node_id}-other"
    async with (
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=15) as first,
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=1) as second,
        worker_process(tmp_path, victim, nats_server.url, first.url) as process,
    ):
        await wait_for_worker(nc, llm(victim))
        async with start_router() as router:
            await until(lambda: victim in router.fleet.nodes, timeout_s=10)
            client = anthropic.AsyncAnthropic(base_url=router.url, api_key="x", max_retries=0)
            pieces: list[str] = []
            async with (
                client.messages.stream(
                    model=MODEL,
                    max_tokens=1000,
                    messages=[{"role": "user", "content": QUESTION}],
                ) as stream,
                worker_process(tmp_path, other, nats_server.url, second.url),
            ):
                await wait_for_worker(nc, llm(other))
                await until(lambda: other in router.fleet.nodes, timeout_s=10)
                async for text in stream.text_stream:
                    pieces.append(text)
                    if len(pieces) == CUT_AFTER:
                        process.send_signal(signal.SIGKILL)
                message = await stream.get_final_message()
            await client.close()
    assert "".join(pieces) == expected_text(MODEL, QUESTION, TOKENS)
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == TOKENS


async def test_an_ollama_stream_resumes_the_same_way(
    tmp_path: Path, nats_server: NatsServer, nc: Any, start_router: RouterFactory, node_id: str
) -> None:
    victim, other = f"{node_id}-victim", f"{node_id}-other"
    async with (
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=15) as first,
        Simulator(models=[SimModel(MODEL)], tokens=TOKENS, token_interval_ms=1) as second,
        worker_process(tmp_path, victim, nats_server.url, first.url) as process,
    ):
        await wait_for_worker(nc, llm(victim))
        async with start_router() as router:
            await until(lambda: victim in router.fleet.nodes, timeout_s=10)
            client = ollama.AsyncClient(host=router.url)
            pieces: list[str] = []
            last = None
            stream = await client.chat(
                model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True
            )
            async with worker_process(tmp_path, other, nats_server.url, second.url):
                await wait_for_worker(nc, llm(other))
                await until(lambda: other in router.fleet.nodes, timeout_s=10)
                async for part in stream:
                    pieces.append(part.message.content or "")
                    last = part
                    if len(pieces) == CUT_AFTER:
                        process.send_signal(signal.SIGKILL)
    assert "".join(pieces) == expected_text(MODEL, QUESTION, TOKENS)
    assert last is not None
    assert last.done
    assert last.done_reason == "stop"
    assert last.eval_count == TOKENS
