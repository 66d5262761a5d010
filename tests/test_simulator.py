"""The runtime simulator, driven over real loopback HTTP the way adapters will drive it."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sim_process import ANNOUNCE, simulator_process
from tools.simulator import Fault, SimModel, Simulator, expected_text, expected_tokens
from tools.simulator.cli import parse_models
from tools.simulator.faults import FaultTable
from tools.simulator.ollama_api import keep_alive_seconds
from tools.simulator.plan import GenRequest, Plan, Rejection, plan_generation, stopped_at

LLM = "llama3:8b"
VISION = "llava:7b"
IDLE = "mistral:7b"
TOKENS = 8
CONTEXT_WINDOW = 50
PROMPT = "why is the sky blue"
REPO_ROOT = Path(__file__).resolve().parents[1]

Json = dict[str, Any]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    models = [
        SimModel(LLM, context_window=CONTEXT_WINDOW),
        SimModel(VISION, vision=True, family="llama"),
        SimModel(IDLE, running=False),
    ]
    async with Simulator(models=models, tokens=TOKENS) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10.0) as http:
        yield http


def ollama_chat(model: str = LLM, text: str = PROMPT, **extra: Any) -> Json:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def openai_chat(model: str = LLM, text: str = PROMPT, **extra: Any) -> Json:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def collect_ndjson(
    client: httpx.AsyncClient, path: str, body: Json, into: list[Json]
) -> None:
    """Read an NDJSON stream into ``into`` line by line (so a test sees partial streams)."""
    async with client.stream("POST", path, json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        async for line in response.aiter_lines():
            if line:
                into.append(json.loads(line))


async def collect_sse(client: httpx.AsyncClient, body: Json, into: list[Json | str]) -> None:
    """Read SSE ``data:`` events into ``into``: parsed chunks, or the raw ``[DONE]``."""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                into.append(data if data == "[DONE]" else json.loads(data))


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (bounded) for ``condition``, for effects that land after the client returns."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition(), "condition not reached in time"


# --- deterministic text and pure decisions -----------------------------------------------


@pytest.mark.parametrize("tokens", [0, 1, 5, 64])
def test_expected_tokens_join_to_expected_text_with_a_space_between_words(tokens: int) -> None:
    pieces = expected_tokens(LLM, PROMPT, tokens)

    assert len(pieces) == tokens
    assert "".join(pieces) == expected_text(LLM, PROMPT, tokens)
    assert all(piece.startswith(" ") for piece in pieces[1:])
    assert not pieces or not pieces[0].startswith(" ")


def test_generated_text_depends_on_model_and_prompt_and_a_capped_answer_is_a_prefix() -> None:
    full = expected_text(LLM, PROMPT, 20)

    assert expected_text(LLM, PROMPT, 20) == full
    assert full.startswith(expected_text(LLM, PROMPT, 7))
    assert expected_text(VISION, PROMPT, 20) != full
    assert expected_text(LLM, "another prompt", 20) != full


@pytest.mark.parametrize(
    ("request_", "model", "outcome"),
    [
        (GenRequest(LLM, PROMPT, 5), None, Rejection("not_found")),
        (GenRequest(LLM, PROMPT, 5, has_images=True), SimModel(LLM), Rejection("no_vision")),
        (
            GenRequest(LLM, PROMPT, 11),
            SimModel(LLM, context_window=10),
            Rejection("context_exceeded", prompt_tokens=11, context_window=10),
        ),
        (
            GenRequest(LLM, PROMPT, 5, max_tokens=3),
            SimModel(LLM),
            Plan(tuple(expected_tokens(LLM, PROMPT, 3)), "length", 5),
        ),
        (
            GenRequest(LLM, PROMPT, 5, max_tokens=TOKENS),
            SimModel(LLM),
            Plan(tuple(expected_tokens(LLM, PROMPT, TOKENS)), "stop", 5),
        ),
        (
            GenRequest(VISION, PROMPT, 5, has_images=True),
            SimModel(VISION, vision=True),
            Plan(tuple(expected_tokens(VISION, PROMPT, TOKENS)), "stop", 5),
        ),
    ],
)
def test_plan_generation_decides_rejection_or_answer(
    request_: GenRequest, model: SimModel | None, outcome: Plan | Rejection
) -> None:
    assert plan_generation(request_, model, TOKENS) == outcome


@pytest.mark.parametrize(
    ("stops", "stopped"),
    [
        ((), None),
        (("zz",), None),
        (("c",), (("ab", " "), "c")),  # inside a piece: that piece is cut short
        ((" cd",), (("ab",), " cd")),  # where a piece starts: the pieces before it
        (("ab",), ((), "ab")),  # at the very start: nothing is left
        (("zz", "d e", "b c"), (("a",), "b c")),  # the first to appear wins
        (("d e",), (("ab", " c"), "d e")),  # across pieces
    ],
)
def test_a_stop_string_ends_the_answer_where_it_first_appears(
    stops: tuple[str, ...], stopped: tuple[tuple[str, ...], str] | None
) -> None:
    assert stopped_at(("ab", " cd", " ef"), stops) == stopped


@pytest.mark.parametrize(
    "settings",
    [
        {"kind": "explode"},
        {"kind": "error", "count": 0},
        {"kind": "error", "delay_ms": -1},
        {"kind": "drop", "after_chunks": -1},
    ],
)
def test_invalid_fault_is_refused_at_construction(settings: Json) -> None:
    with pytest.raises(ValueError, match="Fault"):
        Fault(**settings)


def test_fault_table_uses_up_counts_and_prefers_a_models_own_fault() -> None:
    table = FaultTable()
    table.set("*", Fault("error"))
    table.set(LLM, Fault("drop", count=1))

    assert table.take(LLM) == Fault("drop", count=1)
    assert table.take(LLM) == Fault("error")
    assert table.take(VISION) == Fault("error")
    table.clear()
    assert table.take(LLM) is None


def test_cli_model_list_marks_vision_models_by_suffix() -> None:
    models = parse_models("llama3:8b, llava:7b:vision")

    assert [(m.name, m.vision) for m in models] == [("llama3:8b", False), ("llava:7b", True)]
    with pytest.raises(ValueError, match="no model names"):
        parse_models(" , ")


# --- Ollama API ----------------------------------------------------------------------------


async def test_ollama_chat_streams_ndjson_by_default_ending_with_done_and_counts(
    client: httpx.AsyncClient,
) -> None:
    lines: list[Json] = []
    body = {
        "model": LLM,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": PROMPT},
        ],
    }
    await collect_ndjson(client, "/api/chat", body, lines)

    *pieces, final = lines
    assert [line["message"]["content"] for line in pieces] == expected_tokens(LLM, PROMPT, TOKENS)
    assert all(line["done"] is False and line["model"] == LLM for line in pieces)
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == 2 + 5
    assert final["eval_count"] == TOKENS
    assert final["total_duration"] > 0
    assert final["eval_duration"] > 0


async def test_ollama_chat_without_streaming_returns_one_message(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/chat", json=ollama_chat(stream=False))

    assert response.status_code == 200
    body = response.json()
    assert body["message"] == {"role": "assistant", "content": expected_text(LLM, PROMPT, TOKENS)}
    assert body["done"] is True
    assert body["done_reason"] == "stop"
    assert body["eval_count"] == TOKENS
    assert body["created_at"].endswith("Z")


async def test_ollama_generate_streams_response_pieces_or_answers_whole(
    client: httpx.AsyncClient,
) -> None:
    lines: list[Json] = []
    await collect_ndjson(client, "/api/generate", {"model": LLM, "prompt": PROMPT}, lines)
    whole = await client.post(
        "/api/generate", json={"model": LLM, "prompt": PROMPT, "stream": False}
    )

    assert "".join(line["response"] for line in lines) == expected_text(LLM, PROMPT, TOKENS)
    assert lines[-1]["done"] is True
    assert lines[-1]["response"] == ""
    assert whole.json()["response"] == expected_text(LLM, PROMPT, TOKENS)
    assert whole.json()["prompt_eval_count"] == 5


async def test_ollama_num_predict_caps_tokens_and_reports_length(
    client: httpx.AsyncClient,
) -> None:
    body = ollama_chat(stream=False, options={"num_predict": 3})

    answer = (await client.post("/api/chat", json=body)).json()

    assert answer["message"]["content"] == expected_text(LLM, PROMPT, 3)
    assert answer["done_reason"] == "length"
    assert answer["eval_count"] == 3


async def test_ollama_generate_without_prompt_only_loads_the_model(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/generate", json={"model": LLM})

    assert response.json()["done"] is True
    assert response.json()["done_reason"] == "load"
    assert response.json()["response"] == ""


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", ollama_chat("ghost:1b")),
        ("/api/generate", {"model": "ghost:1b", "prompt": PROMPT}),
        ("/api/show", {"model": "ghost:1b"}),
    ],
)
async def test_ollama_unknown_model_is_404_with_ollama_error_body(
    client: httpx.AsyncClient, path: str, body: Json
) -> None:
    response = await client.post(path, json=body)

    assert response.status_code == 404
    assert response.json() == {"error": "model 'ghost:1b' not found"}


async def test_ollama_lists_installed_and_running_models_with_details(
    client: httpx.AsyncClient,
) -> None:
    tags = (await client.get("/api/tags")).json()["models"]
    running = (await client.get("/api/ps")).json()["models"]
    show = (await client.post("/api/show", json={"model": VISION})).json()
    version = (await client.get("/api/version")).json()

    assert [model["name"] for model in tags] == [LLM, VISION, IDLE]
    assert tags[0]["details"]["family"] == "llama"
    assert tags[0]["size"] == 4_000_000_000
    assert [model["name"] for model in running] == [LLM, VISION]
    assert running[0]["context_length"] == CONTEXT_WINDOW
    assert "vision" in show["capabilities"]
    assert show["model_info"]["llama.context_length"] == 8192
    assert isinstance(version["version"], str)


async def test_ollama_images_need_a_vision_model(client: httpx.AsyncClient) -> None:
    message = {"role": "user", "content": PROMPT, "images": ["aGVsbG8="]}

    refused = await client.post("/api/chat", json={"model": LLM, "messages": [message]})
    accepted = await client.post(
        "/api/chat", json={"model": VISION, "messages": [message], "stream": False}
    )

    assert refused.status_code == 400
    assert "does not support vision" in refused.json()["error"]
    assert accepted.json()["message"]["content"] == expected_text(VISION, PROMPT, TOKENS)


# --- OpenAI-compatible API -----------------------------------------------------------------


async def test_openai_chat_completion_carries_text_finish_reason_and_usage(
    client: httpx.AsyncClient,
) -> None:
    body = {
        "model": LLM,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": PROMPT},
        ],
    }

    completion = (await client.post("/v1/chat/completions", json=body)).json()

    assert completion["object"] == "chat.completion"
    assert completion["model"] == LLM
    assert completion["id"].startswith("chatcmpl-")
    choice = completion["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == expected_text(LLM, PROMPT, TOKENS)
    assert choice["finish_reason"] == "stop"
    assert completion["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": TOKENS,
        "total_tokens": 7 + TOKENS,
    }


async def test_openai_stream_sends_role_then_one_chunk_per_token_then_done(
    client: httpx.AsyncClient,
) -> None:
    events: list[Json | str] = []
    await collect_sse(client, openai_chat(stream=True), events)

    *chunks, done = events
    assert done == "[DONE]"
    parsed = [chunk for chunk in chunks if isinstance(chunk, dict)]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in parsed)
    assert len({chunk["id"] for chunk in parsed}) == 1
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    contents = [chunk["choices"][0]["delta"].get("content") for chunk in parsed[1:-1]]
    assert contents == expected_tokens(LLM, PROMPT, TOKENS)
    assert parsed[-1]["choices"][0]["delta"] == {}
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in parsed)


async def test_openai_stream_include_usage_ends_with_a_usage_chunk_without_choices(
    client: httpx.AsyncClient,
) -> None:
    events: list[Json | str] = []
    body = openai_chat(stream=True, stream_options={"include_usage": True})
    await collect_sse(client, body, events)

    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert isinstance(usage_chunk, dict)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": TOKENS,
        "total_tokens": 5 + TOKENS,
    }
    assert all(isinstance(chunk, dict) and chunk["usage"] is None for chunk in chunks)


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
async def test_openai_token_cap_truncates_with_length_finish_reason(
    client: httpx.AsyncClient, param: str
) -> None:
    body = {**openai_chat(), param: 3}

    completion = (await client.post("/v1/chat/completions", json=body)).json()

    assert completion["choices"][0]["message"]["content"] == expected_text(LLM, PROMPT, 3)
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 3


async def test_openai_text_parts_are_the_prompt_and_image_parts_need_a_vision_model(
    client: httpx.AsyncClient,
) -> None:
    parts = [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
    ]
    message = {"role": "user", "content": parts}

    accepted = await client.post(
        "/v1/chat/completions", json={"model": VISION, "messages": [message]}
    )
    refused = await client.post("/v1/chat/completions", json={"model": LLM, "messages": [message]})

    content = accepted.json()["choices"][0]["message"]["content"]
    assert content == expected_text(VISION, PROMPT, TOKENS)
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"


async def test_openai_unknown_model_is_404_model_not_found(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=openai_chat("ghost:1b"))

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "ghost:1b" in error["message"]


async def test_health_and_model_list_answer_like_openai_compatible_servers(
    client: httpx.AsyncClient,
) -> None:
    health = await client.get("/health")
    models = (await client.get("/v1/models")).json()

    assert health.json() == {"status": "ok"}
    assert models["object"] == "list"
    assert [model["id"] for model in models["data"]] == [LLM, VISION, IDLE]
    assert all(model["object"] == "model" for model in models["data"])


# --- shared validation ---------------------------------------------------------------------


async def test_prompt_longer_than_the_context_window_is_rejected_in_both_formats(
    client: httpx.AsyncClient,
) -> None:
    long_prompt = " ".join(["word"] * (CONTEXT_WINDOW + 1))

    ollama = await client.post("/api/chat", json=ollama_chat(text=long_prompt))
    openai = await client.post("/v1/chat/completions", json=openai_chat(text=long_prompt))

    assert ollama.status_code == 400
    assert "context length" in ollama.json()["error"]
    assert openai.status_code == 400
    assert openai.json()["error"]["code"] == "context_length_exceeded"
    assert str(CONTEXT_WINDOW) in openai.json()["error"]["message"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'{"messages": []}'])
async def test_malformed_requests_get_400_in_each_formats_error_shape(
    client: httpx.AsyncClient, content: bytes
) -> None:
    ollama = await client.post("/api/chat", content=content)
    openai = await client.post("/v1/chat/completions", content=content)

    assert ollama.status_code == 400
    assert isinstance(ollama.json()["error"], str)
    assert openai.status_code == 400
    assert openai.json()["error"]["type"] == "invalid_request_error"


# --- faults --------------------------------------------------------------------------------


async def test_error_fault_fails_the_next_requests_with_runtime_error_bodies_then_recovers(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_fault(LLM, Fault("error", count=2))

    ollama = await client.post("/api/chat", json=ollama_chat(stream=False))
    openai = await client.post("/v1/chat/completions", json=openai_chat())
    recovered = await client.post("/v1/chat/completions", json=openai_chat())

    assert ollama.status_code == 500
    assert isinstance(ollama.json()["error"], str)
    assert openai.status_code == 500
    assert openai.json()["error"]["type"] == "server_error"
    assert recovered.status_code == 200


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("not_found", 404, "model_not_found"), ("context_exceeded", 400, "context_length_exceeded")],
)
async def test_rejection_faults_look_like_the_real_rejections(
    sim: Simulator, client: httpx.AsyncClient, kind: str, status: int, code: str
) -> None:
    sim.set_fault(LLM, Fault(kind, count=1))

    response = await client.post("/v1/chat/completions", json=openai_chat())

    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_wildcard_fault_hits_every_model_until_cleared(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_fault("*", Fault("error"))

    during = [
        (await client.post("/v1/chat/completions", json=openai_chat(model))).status_code
        for model in (LLM, VISION, LLM)
    ]
    sim.clear_faults()
    after = await client.post("/v1/chat/completions", json=openai_chat(VISION))

    assert during == [500, 500, 500]
    assert after.status_code == 200


async def test_hang_fault_never_answers_and_ends_when_the_client_gives_up(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_fault(LLM, Fault("hang", count=1))

    with pytest.raises(httpx.ReadTimeout):
        await client.post("/api/chat", json=ollama_chat(stream=False), timeout=0.3)

    await eventually(lambda: sim.open_connections == 0)
    assert (await client.post("/api/chat", json=ollama_chat(stream=False))).status_code == 200


async def test_slow_first_byte_fault_delays_headers_then_answers_normally(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_fault(LLM, Fault("slow_first_byte", count=1, delay_ms=2_000))
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json=openai_chat(), timeout=0.2)

    sim.set_fault(LLM, Fault("slow_first_byte", count=1, delay_ms=50))
    slow = await client.post("/v1/chat/completions", json=openai_chat())

    assert slow.json()["choices"][0]["message"]["content"] == expected_text(LLM, PROMPT, TOKENS)


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/chat", ollama_chat(stream=False)), ("/v1/chat/completions", openai_chat())],
)
async def test_drop_fault_closes_the_connection_without_a_response(
    sim: Simulator, client: httpx.AsyncClient, path: str, body: Json
) -> None:
    sim.set_fault(LLM, Fault("drop", count=1))

    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(path, json=body)


async def test_drop_fault_mid_stream_delivers_some_chunks_then_cuts_the_connection(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_fault(LLM, Fault("drop", count=2, after_chunks=3))
    lines: list[Json] = []
    events: list[Json | str] = []

    with pytest.raises(httpx.RemoteProtocolError):
        await collect_ndjson(client, "/api/chat", ollama_chat(), lines)
    with pytest.raises(httpx.RemoteProtocolError):
        await collect_sse(client, openai_chat(stream=True), events)

    assert [line["message"]["content"] for line in lines] == expected_tokens(LLM, PROMPT, 3)
    assert len(events) == 1 + 3  # the role chunk, then three tokens
    assert "[DONE]" not in events


async def test_error_fault_mid_stream_reports_the_error_in_band(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_fault(LLM, Fault("error", count=2, after_chunks=2))
    lines: list[Json] = []
    events: list[Json | str] = []

    await collect_ndjson(client, "/api/chat", ollama_chat(), lines)
    await collect_sse(client, openai_chat(stream=True), events)

    assert len(lines) == 3
    assert isinstance(lines[-1]["error"], str)
    last = events[-1]
    assert isinstance(last, dict)
    assert last["error"]["type"] == "server_error"
    assert "[DONE]" not in events


# --- observation and control ---------------------------------------------------------------


async def test_calls_are_counted_per_model_on_arrival_whatever_the_outcome(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.set_fault(VISION, Fault("error", count=1))

    await client.post("/api/chat", json=ollama_chat(stream=False))
    await client.post("/v1/chat/completions", json=openai_chat())
    await client.post("/api/generate", json={"model": VISION, "prompt": PROMPT})
    await client.post("/v1/chat/completions", json=openai_chat("ghost:1b"))
    await client.get("/api/tags")

    assert sim.calls == {LLM: 2, VISION: 1, "ghost:1b": 1}
    sim.reset_calls()
    assert sim.calls[LLM] == 0


async def test_open_connections_return_to_zero_after_the_client_leaves_mid_stream(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.tokens = 10_000
    sim.token_interval_ms = 20
    seen_while_streaming = -1

    async with client.stream("POST", "/api/chat", json=ollama_chat()) as response:
        async for line in response.aiter_lines():
            if line:
                seen_while_streaming = sim.open_connections
                break

    assert seen_while_streaming == 1
    await eventually(lambda: sim.open_connections == 0)


async def test_runtime_settings_change_answers_of_a_running_simulator(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.tokens = 3
    sim.latency_ms = 1

    answer = (await client.post("/api/chat", json=ollama_chat(stream=False))).json()

    assert answer["message"]["content"] == expected_text(LLM, PROMPT, 3)
    with pytest.raises(ValueError, match="latency_ms"):
        sim.latency_ms = -1


async def test_http_control_endpoints_arm_faults_change_settings_and_report_calls(
    client: httpx.AsyncClient,
) -> None:
    armed = await client.post("/_sim/faults", json={"model": LLM, "kind": "error", "count": 1})
    failed = await client.post("/v1/chat/completions", json=openai_chat())
    configured = await client.post("/_sim/config", json={"tokens": 2, "latency_ms": 0})
    answer = (await client.post("/v1/chat/completions", json=openai_chat())).json()
    await client.post("/_sim/faults", json={"model": "*", "kind": "drop"})
    await client.delete("/_sim/faults")
    cleared = await client.post("/v1/chat/completions", json=openai_chat())
    calls = (await client.get("/_sim/calls")).json()
    refused = await client.post("/_sim/faults", json={"model": LLM, "kind": "explode"})

    assert armed.status_code == 200
    assert failed.status_code == 500
    assert configured.json()["tokens"] == 2
    assert answer["choices"][0]["message"]["content"] == expected_text(LLM, PROMPT, 2)
    assert cleared.status_code == 200
    assert calls == {"calls": {LLM: 3}, "open_connections": 0}
    assert refused.status_code == 400
    assert "kind" in refused.json()["error"]


async def test_stop_ends_hanging_requests_is_idempotent_and_can_restart_on_the_same_port() -> None:
    simulator = Simulator(models=[SimModel(LLM)])
    await simulator.start()
    port = simulator.port
    simulator.set_fault(LLM, Fault("hang"))
    async with httpx.AsyncClient(base_url=simulator.url, timeout=10.0) as http:
        hanging = asyncio.create_task(http.post("/api/chat", json=ollama_chat(stream=False)))
        await eventually(lambda: simulator.open_connections == 1)

        await simulator.stop()
        await simulator.stop()
        with pytest.raises(httpx.RemoteProtocolError):
            await hanging

        await simulator.start()
        try:
            simulator.clear_faults()
            restarted = await http.get("/health")
        finally:
            await simulator.stop()

    assert simulator.port == port
    assert restarted.json() == {"status": "ok"}
    assert simulator.open_connections == 0


async def test_cli_process_announces_its_url_serves_and_exits_cleanly_on_sigterm() -> None:
    args = ("--port", "0", "--models", "tiny:1b,eye:2b:vision", "--tokens", "3")
    async with simulator_process(*args) as (process, line):
        url = line.removeprefix(ANNOUNCE)
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
            names = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
            show = (await http.post("/api/show", json={"model": "eye:2b"})).json()
            answer = (await http.post("/v1/chat/completions", json=openai_chat("tiny:1b"))).json()
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(process.wait(), 20)

    assert line.startswith("simulator listening on http://127.0.0.1:")
    assert names == ["tiny:1b", "eye:2b"]
    assert "vision" in show["capabilities"]
    assert answer["choices"][0]["message"]["content"] == expected_text("tiny:1b", PROMPT, 3)
    assert exit_code == 0


async def test_cli_plays_llama_server_with_its_slots_and_api_key() -> None:
    args = ("--port", "0", "--models", "/srv/tiny.gguf", "--llama-server", "2")
    async with simulator_process(*args, "--api-key", "sesame") as (_, line):
        url = line.removeprefix(ANNOUNCE)
        key = {"Authorization": "Bearer sesame"}
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
            health = await http.get("/health")
            refused = await http.get("/v1/models")
            props = (await http.get("/props", headers=key)).json()
            listed = (await http.get("/v1/models", headers=key)).json()
            answer = await http.post(
                "/v1/chat/completions", json=openai_chat("any-name"), headers=key
            )
    assert (health.status_code, refused.status_code) == (200, 401)
    assert props["total_slots"] == 2
    assert listed["data"][0]["id"] == "/srv/tiny.gguf"
    assert listed["data"][0]["meta"]["n_ctx"] == props["default_generation_settings"]["n_ctx"]
    assert answer.json()["model"] == "/srv/tiny.gguf"  # whatever was asked: its one model


@pytest.mark.parametrize(
    ("keep_alive", "seconds"),
    [
        (None, None),
        (300, 300.0),
        (-1, -1.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("-1m", -60.0),
        ("0", 0.0),
        ("300", 300.0),
        ("soon", None),
        ("10m later", None),
        (True, None),
    ],
)
def test_keep_alive_is_read_as_ollama_reads_it(keep_alive: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(keep_alive) == seconds


async def test_ollama_ps_follows_keep_alive() -> None:
    models = [SimModel("kept:1b"), SimModel("forever:1b"), SimModel("unloaded:1b")]
    async with Simulator(models, tokens=2) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        for name, keep_alive in (("kept:1b", "2h"), ("forever:1b", -1), ("unloaded:1b", 0)):
            body = {"model": name, "prompt": "hi", "stream": False, "keep_alive": keep_alive}
            assert (await http.post("/api/generate", json=body)).status_code == 200
        loaded = {m["model"]: m["expires_at"] for m in (await http.get("/api/ps")).json()["models"]}
    assert sorted(loaded) == ["forever:1b", "kept:1b"]  # keep_alive 0: unloaded at once
    assert loaded["forever:1b"].startswith("2318-")
    assert datetime.fromisoformat(loaded["kept:1b"]) > datetime.now(UTC) + timedelta(hours=1)
