"""What the real llama.cpp server says on the wire, pinned down for the runtime adapter.

These tests talk raw HTTP to `llama_cpp.server` serving the tiny model, so that when
llama-cpp-python changes its wire format (it has before), the failure points here and not
at some worker test three layers up. Error cases use a fresh client per request because the
server drops the connection after some of them (see the stream-overflow test).

The `llama_server` fixture comes from `tests.llamacpp` via `tests/conftest.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.llamacpp import LlamaCppServer, LlamaCppServerError
from tests.tiny_gguf import write_tiny_llama_gguf

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]


async def post_json(server: LlamaCppServer, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
        return await client.post(path, json=body)


async def stream_events(server: LlamaCppServer, body: dict[str, Any]) -> tuple[int, list[str]]:
    """POST with `stream: true`; the status and every SSE `data:` payload, in order."""
    payloads: list[str] = []
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30.0) as client,
        client.stream("POST", CHAT, json={**body, "stream": True}) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payloads.append(line.removeprefix("data: "))
    return response.status_code, payloads


async def test_models_lists_the_alias(llama_server: LlamaCppServer) -> None:
    async with httpx.AsyncClient(base_url=llama_server.url) as client:
        models = (await client.get("/v1/models")).json()
    assert [model["id"] for model in models["data"]] == [llama_server.model]


async def test_chat_completion_returns_text_and_real_usage(llama_server: LlamaCppServer) -> None:
    response = await post_json(
        llama_server, CHAT, {"model": llama_server.model, "messages": HELLO, "max_tokens": 8}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == llama_server.model
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_sends_role_then_content_then_finish_then_done(
    llama_server: LlamaCppServer,
) -> None:
    status, payloads = await stream_events(
        llama_server, {"model": llama_server.model, "messages": HELLO, "max_tokens": 8}
    )

    assert status == 200
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    finish_reasons = [chunk["choices"][0]["finish_reason"] for chunk in chunks]
    assert deltas[0] == {"role": "assistant"}
    assert "".join(delta.get("content", "") for delta in deltas)
    # One chunk per token, and a final empty delta that carries the finish reason.
    assert len(chunks) == 1 + 8 + 1
    assert deltas[-1] == {}
    assert finish_reasons == [None] * 9 + ["length"]
    # No usage in streams, even when asked for with stream_options (checked separately).
    assert all("usage" not in chunk for chunk in chunks)


async def test_stream_ignores_include_usage(llama_server: LlamaCppServer) -> None:
    _, payloads = await stream_events(
        llama_server,
        {"messages": HELLO, "max_tokens": 2, "stream_options": {"include_usage": True}},
    )

    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert not any(chunk.get("usage") for chunk in chunks)


async def test_stop_string_finishes_with_stop(llama_server: LlamaCppServer) -> None:
    greedy = {"messages": HELLO, "max_tokens": 8, "temperature": 0}
    text = (await post_json(llama_server, CHAT, greedy)).json()["choices"][0]["message"]["content"]
    stop = text[-1]

    response = await post_json(llama_server, CHAT, {**greedy, "stop": [stop]})

    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == text[: text.index(stop)]


async def test_temperature_zero_is_deterministic(llama_server: LlamaCppServer) -> None:
    greedy = {"messages": HELLO, "max_tokens": 8, "temperature": 0}
    first = await post_json(llama_server, CHAT, greedy)
    second = await post_json(llama_server, CHAT, greedy)
    assert first.json()["choices"] == second.json()["choices"]


async def test_unknown_model_name_is_served_by_the_default_model(
    llama_server: LlamaCppServer,
) -> None:
    response = await post_json(
        llama_server, CHAT, {"model": "no-such-model", "messages": HELLO, "max_tokens": 2}
    )

    assert response.status_code == 200
    # The request's name is echoed back, not the name of the model that answered.
    assert response.json()["model"] == "no-such-model"


async def test_omitted_model_name_is_answered_with_the_model_path(
    llama_server: LlamaCppServer,
) -> None:
    response = await post_json(llama_server, CHAT, {"messages": HELLO, "max_tokens": 2})

    assert response.status_code == 200
    assert response.json()["model"] == str(llama_server.model_path)


async def test_prompt_longer_than_context_is_rejected_with_openai_error(
    llama_server: LlamaCppServer,
) -> None:
    too_long = [{"role": "user", "content": "x" * llama_server.n_ctx}]

    response = await post_json(llama_server, CHAT, {"messages": too_long, "max_tokens": 8})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert f"maximum context length is {llama_server.n_ctx} tokens" in error["message"]


async def test_max_tokens_past_the_context_is_clamped_not_rejected(
    llama_server: LlamaCppServer,
) -> None:
    response = await post_json(
        llama_server, CHAT, {"messages": HELLO, "max_tokens": 10 * llama_server.n_ctx}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == llama_server.n_ctx


async def test_streamed_prompt_longer_than_context_is_200_without_done(
    llama_server: LlamaCppServer,
) -> None:
    """The error surfaces only after the 200 headers, so the stream is just cut short."""
    too_long = [{"role": "user", "content": "x" * llama_server.n_ctx}]

    status, payloads = await stream_events(llama_server, {"messages": too_long, "max_tokens": 8})

    assert status == 200
    assert payloads == []


async def test_malformed_body_is_a_500_not_a_422(llama_server: LlamaCppServer) -> None:
    response = await post_json(llama_server, CHAT, {"messages": "not a list"})

    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal_server_error"
    assert "validation error" in error["message"]


async def test_server_that_cannot_load_its_model_fails_with_its_output(tmp_path: Path) -> None:
    server = LlamaCppServer(tmp_path / "missing.gguf", startup_timeout=30.0)

    with pytest.raises(LlamaCppServerError, match="Model path does not exist"):
        await server.start()

    assert server.pid is None


async def test_stop_terminates_the_process_and_is_idempotent(tmp_path: Path) -> None:
    model_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", seed=1)
    server = LlamaCppServer(model_path, model_alias="other-tiny")
    async with server:
        pid = server.pid
        assert pid is not None
        assert server.startup_seconds is not None
        assert 0 < server.startup_seconds < server.startup_timeout

    await server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
