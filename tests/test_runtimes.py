"""Runtime adapters: pure mappings by tables, then both adapters against the simulator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
import pytest

from services.errors import ErrorCode, InferbusError, Reason
from services.runtimes import (
    ChatCall,
    OllamaRuntime,
    OpenAICompatRuntime,
    Runtime,
    RuntimeKind,
    StreamDelta,
    StreamEnd,
    StreamEvent,
    make_runtime,
    new_http_client,
    ollama,
    openai_compat,
)
from services.runtimes.errors import (
    classify_http_error,
    classify_stream_error,
    classify_transport_error,
    refused_our_key,
    retry_after_ms,
)
from services.wire import Message, Params
from tools.simulator import Fault, SimModel, Simulator, expected_text

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
PNG_B64 = base64.b64encode(PNG).decode()
JPEG_B64 = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00").decode()
GIF_B64 = base64.b64encode(b"GIF89a\x01\x00\x01\x00\x80\x00\x00").decode()
WEBP_B64 = base64.b64encode(b"RIFF\x24\x00\x00\x00WEBPVP8 ").decode()
API_KEY = "sk-live-0123456789abcdef"


# --- classify_http_error -------------------------------------------------------------

HTTP_CASES: list[tuple[str, int, bytes, dict[str, str], ErrorCode, bool, int | None]] = [
    # (case, status, body, headers, code, retryable, retry_after_ms)
    (
        "ollama unknown model",
        404,
        b'{"error":"model \\"nope\\" not found, try pulling it first"}',
        {},
        ErrorCode.MODEL_NOT_FOUND,
        True,
        None,
    ),
    (
        "openai model_not_found on 400",
        400,
        b'{"error":{"message":"The model `x` does not exist","type":"invalid_request_error",'
        b'"param":null,"code":"model_not_found"}}',
        {},
        ErrorCode.MODEL_NOT_FOUND,
        True,
        None,
    ),
    (
        "vllm legacy top-level error",
        404,
        b'{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError",'
        b'"param":null,"code":404}',
        {},
        ErrorCode.MODEL_NOT_FOUND,
        True,
        None,
    ),
    (
        "openai context_length_exceeded",
        400,
        b'{"error":{"message":"too long","type":"invalid_request_error","param":"messages",'
        b'"code":"context_length_exceeded"}}',
        {},
        ErrorCode.CONTEXT_EXCEEDED,
        False,
        None,
    ),
    (
        "llama.cpp exceed_context_size_error",
        400,
        b'{"error":{"code":400,"message":"request (9412 tokens) exceeds the available context '
        b'size (8192 tokens), try increasing it","type":"exceed_context_size_error",'
        b'"n_prompt_tokens":9412,"n_ctx":8192}}',
        {},
        ErrorCode.CONTEXT_EXCEEDED,
        False,
        None,
    ),
    (
        "ollama context text on a 500",
        500,
        b'{"error":"the input length exceeds the context length"}',
        {},
        ErrorCode.CONTEXT_EXCEEDED,
        False,
        None,
    ),
    (
        "vllm maximum context length",
        400,
        b'{"error":{"message":"This model\'s maximum context length is 4096 tokens. However, '
        b'you requested 5000 tokens","type":"BadRequestError","param":null,"code":400}}',
        {},
        ErrorCode.CONTEXT_EXCEEDED,
        False,
        None,
    ),
    (
        "rate limited with retry-after seconds",
        429,
        b'{"error":{"message":"Rate limit reached: 10000 tokens per min","type":"tokens",'
        b'"code":"rate_limit_exceeded"}}',
        {"retry-after": "2"},
        ErrorCode.BACKEND_UNAVAILABLE,
        True,
        2000,
    ),
    (
        "rate limited with retry-after-ms",
        429,
        b"{}",
        {"retry-after-ms": "150", "retry-after": "1"},
        ErrorCode.BACKEND_UNAVAILABLE,
        True,
        150,
    ),
    (
        "llama.cpp loading model",
        503,
        b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}',
        {},
        ErrorCode.BACKEND_UNAVAILABLE,
        True,
        None,
    ),
    (
        "ollama server busy",
        503,
        b'{"error":"server busy, please try again.  maximum pending requests exceeded"}',
        {"Retry-After": "1"},
        ErrorCode.BACKEND_UNAVAILABLE,
        True,
        1000,
    ),
    (
        "invalid request is the request's fault",
        400,
        b'{"error":{"message":"temperature must be >= 0","type":"invalid_request_error"}}',
        {},
        ErrorCode.BAD_REQUEST,
        False,
        None,
    ),
    (
        "unprocessable entity",
        422,
        b'{"detail":[{"msg":"field required"}]}',
        {},
        ErrorCode.BAD_REQUEST,
        False,
        None,
    ),
    (
        "payload too large",
        413,
        b"request entity too large",
        {},
        ErrorCode.PAYLOAD_TOO_LARGE,
        False,
        None,
    ),
    (
        "bad api key",
        401,
        b'{"error":{"message":"Invalid API Key","type":"authentication_error","code":401}}',
        {},
        ErrorCode.BACKEND_ERROR,
        True,
        None,
    ),
    ("internal error", 500, b"boom", {}, ErrorCode.BACKEND_ERROR, True, None),
    (
        "bad gateway",
        502,
        b"<html>bad gateway</html>",
        {},
        ErrorCode.BACKEND_UNAVAILABLE,
        True,
        None,
    ),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "code", "retryable", "retry_ms"),
    [case[1:] for case in HTTP_CASES],
    ids=[case[0] for case in HTTP_CASES],
)
def test_http_errors_map_to_our_codes(
    status: int,
    body: bytes,
    headers: dict[str, str],
    code: ErrorCode,
    retryable: bool,
    retry_ms: int | None,
) -> None:
    error = classify_http_error(status, body, httpx.Headers(headers))
    assert (error.code, error.retryable, error.retry_after_ms) == (code, retryable, retry_ms)
    assert error.message.startswith(f"HTTP {status}: ")


def test_http_error_message_keeps_runtime_text_truncated_and_without_keys() -> None:
    body = (
        b'{"error":{"message":"Incorrect API key provided: '
        + API_KEY.encode()
        + b" "
        + b"x" * 1000
        + b'"}}'
    )
    error = classify_http_error(401, body, {}, secrets=[API_KEY])
    assert "Incorrect API key provided" in error.message
    assert API_KEY not in error.message
    assert len(error.message) < 320


def test_bearer_tokens_and_url_passwords_never_reach_messages() -> None:
    error = classify_http_error(
        500, b"echo: Authorization: Bearer abc.def and http://bob:hunter2@host/x", {}
    )
    assert "abc.def" not in error.message
    assert "hunter2" not in error.message


@pytest.mark.parametrize(
    ("headers", "now", "expected"),
    [
        ({}, None, None),
        ({"retry-after": "1.5"}, None, 1500),
        ({"retry-after": "-3"}, None, 0),
        ({"retry-after": "soon"}, None, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, None, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 1445412480.0, 10_000),
        ({"retry-after-ms": "250"}, None, 250),
    ],
)
def test_retry_after_is_read_in_ms(
    headers: dict[str, str], now: float | None, expected: int | None
) -> None:
    assert retry_after_ms(httpx.Headers(headers), now_unix_s=now) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"error": "an error was encountered while running the model"}, ErrorCode.BACKEND_ERROR),
        (
            {"error": {"message": "exceeds the available context size", "type": "x"}},
            ErrorCode.CONTEXT_EXCEEDED,
        ),
        ({"error": "model 'x' not found"}, ErrorCode.MODEL_NOT_FOUND),
    ],
)
def test_errors_inside_a_stream_are_classified_by_their_text(
    payload: dict[str, Any], code: ErrorCode
) -> None:
    assert classify_stream_error(payload).code == code


# --- classify_transport_error ----------------------------------------------------------


def _chained(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


TRANSPORT_CASES: list[tuple[str, Callable[[], BaseException], ErrorCode]] = [
    ("our deadline", lambda: TimeoutError(), ErrorCode.DEADLINE_EXCEEDED),
    (
        "aiohttp server disconnected, mislabelled ConnectTimeout",
        lambda: _chained(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()),
        ErrorCode.BACKEND_UNAVAILABLE,
    ),
    (
        "aiohttp connect timeout",
        lambda: _chained(httpx.ConnectTimeout("x"), aiohttp.ConnectionTimeoutError()),
        ErrorCode.BACKEND_UNAVAILABLE,
    ),
    (
        "aiohttp read timeout",
        lambda: _chained(httpx.ReadTimeout("x"), aiohttp.SocketTimeoutError()),
        ErrorCode.DEADLINE_EXCEEDED,
    ),
    ("httpx native connect error", lambda: httpx.ConnectError("x"), ErrorCode.BACKEND_UNAVAILABLE),
    ("httpx native read timeout", lambda: httpx.ReadTimeout("x"), ErrorCode.DEADLINE_EXCEEDED),
    (
        "httpx remote protocol error",
        lambda: httpx.RemoteProtocolError("x"),
        ErrorCode.BACKEND_UNAVAILABLE,
    ),
    (
        "payload cut mid-body",
        lambda: _chained(httpx.ReadError("x"), aiohttp.ClientPayloadError("not completed")),
        ErrorCode.BACKEND_UNAVAILABLE,
    ),
]


@pytest.mark.parametrize(
    ("make", "code"),
    [case[1:] for case in TRANSPORT_CASES],
    ids=[case[0] for case in TRANSPORT_CASES],
)
def test_transport_failures_are_deadline_or_unreachable(
    make: Callable[[], BaseException], code: ErrorCode
) -> None:
    assert classify_transport_error(make()).code == code


def test_mid_stream_drop_says_so() -> None:
    error = classify_transport_error(httpx.ReadError("gone"), mid_stream=True)
    assert error.code == ErrorCode.BACKEND_UNAVAILABLE
    assert "mid-stream" in error.message


# --- request mapping ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (PNG_B64, PNG_B64),
        (f"data:image/png;base64,{PNG_B64}", PNG_B64),
        (f"data:image/jpeg;base64,{JPEG_B64}", JPEG_B64),
    ],
)
def test_ollama_gets_raw_base64(image: str, expected: str) -> None:
    assert ollama.ollama_image(image) == expected


@pytest.mark.parametrize("image", ["https://example.com/cat.png", "data:image/svg+xml,<svg/>"])
def test_ollama_rejects_images_it_cannot_take(image: str) -> None:
    with pytest.raises(InferbusError) as caught:
        ollama.ollama_image(image)
    assert caught.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (PNG_B64, f"data:image/png;base64,{PNG_B64}"),
        (JPEG_B64, f"data:image/jpeg;base64,{JPEG_B64}"),
        (GIF_B64, f"data:image/gif;base64,{GIF_B64}"),
        (WEBP_B64, f"data:image/webp;base64,{WEBP_B64}"),
        ("not base64 at all!", "data:image/png;base64,not base64 at all!"),
        (f"data:image/jpeg;base64,{JPEG_B64}", f"data:image/jpeg;base64,{JPEG_B64}"),
    ],
)
def test_openai_gets_data_uris_with_sniffed_type(image: str, expected: str) -> None:
    assert openai_compat.openai_image_url(image) == expected


@pytest.mark.parametrize("image", ["https://example.com/cat.png", "http://10.0.0.5/a.png"])
def test_neither_adapter_passes_an_image_url_to_its_runtime(image: str) -> None:
    """vLLM and others would fetch the URL from inside the GPU network."""
    message = Message(content="look", images=[image])
    for adapt in (openai_compat.openai_message, ollama.ollama_message):
        with pytest.raises(InferbusError) as caught:
            adapt(message)
        assert caught.value.code == ErrorCode.BAD_REQUEST


def test_openai_message_with_images_becomes_content_parts() -> None:
    message = Message.model_validate(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            ],
            "images": [JPEG_B64],
        }
    )
    assert openai_compat.openai_message(message) == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG_B64}"}},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        ],
    }


def test_text_only_messages_stay_plain_strings() -> None:
    message = Message(role="system", content="be brief")
    assert openai_compat.openai_message(message) == {"role": "system", "content": "be brief"}
    assert ollama.ollama_message(message) == {"role": "system", "content": "be brief"}


def test_ollama_message_carries_images_field() -> None:
    message = Message(content="look", images=[f"data:image/png;base64,{PNG_B64}"])
    assert ollama.ollama_message(message) == {
        "role": "user",
        "content": "look",
        "images": [PNG_B64],
    }


PARAM_CASES: list[tuple[Params, dict[str, Any], dict[str, Any]]] = [
    # (params, ollama options, openai top-level fields)
    (Params(), {}, {}),
    (
        Params(temperature=0.0, top_p=0.9, max_tokens=64, stop="\n", seed=7),
        {"temperature": 0.0, "top_p": 0.9, "num_predict": 64, "stop": ["\n"], "seed": 7},
        {"temperature": 0.0, "top_p": 0.9, "max_tokens": 64, "stop": "\n", "seed": 7},
    ),
    (
        Params(stop=["a", "b"]),
        {"stop": ["a", "b"]},
        {"stop": ["a", "b"]},
    ),
]


@pytest.mark.parametrize(("params", "ollama_options", "openai_fields"), PARAM_CASES)
def test_params_map_to_runtime_options_only_when_set(
    params: Params, ollama_options: dict[str, Any], openai_fields: dict[str, Any]
) -> None:
    call = ChatCall("m", [Message(content="hi")], params)
    ollama_body = ollama.chat_body(call, stream=False)
    assert ollama_body.get("options", {}) == ollama_options
    assert ollama_body["stream"] is False  # Ollama streams by default
    openai_body = openai_compat.chat_body(call, stream=False)
    assert {k: v for k, v in openai_body.items() if k not in ("model", "messages")} == (
        openai_fields
    )


def test_openai_stream_request_asks_for_usage() -> None:
    body = openai_compat.chat_body(ChatCall("m", [Message(content="hi")]), stream=True)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
        ("https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "https://generativelanguage.googleapis.com/v1beta/openai",
        ),
    ],
)
def test_openai_api_base_from_configured_url(url: str, base: str) -> None:
    assert openai_compat.api_base(url) == base


# --- model listings ----------------------------------------------------------------------


def test_ollama_listing_merges_tags_and_ps() -> None:
    tags = {
        "models": [
            {
                "name": "llama3:8b",
                "size": 4_000,
                "details": {"family": "llama", "quantization_level": "Q4_K_M"},
            },
            {"name": "llava:7b", "size": 5_000, "details": {"family": "llama"}},
        ]
    }
    ps = {"models": [{"name": "llava:7b", "size": 5_000, "context_length": 4096}]}
    found = {m.name: m for m in ollama.models_from_listing(tags, ps)}
    assert found["llama3:8b"].running is False
    assert found["llava:7b"].running is True
    assert found["llava:7b"].context_window == 4096
    assert found["llama3:8b"].family == "llama"
    assert found["llama3:8b"].size_bytes == 4_000
    unknown = ollama.models_from_listing(tags, None)
    assert all(model.running is None for model in unknown)


def test_ollama_show_reads_architecture_context_length_and_capabilities() -> None:
    show = {
        "details": {"family": "llama", "quantization_level": "Q4_0"},
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
        "capabilities": ["completion", "vision"],
    }
    info = ollama.model_from_show("llava:7b", show)
    assert (info.context_window, info.family, info.capabilities) == (
        8192,
        "llama",
        ("completion", "vision"),
    )


def test_openai_listing_reads_vllm_max_model_len() -> None:
    listing = {
        "object": "list",
        "data": [
            {"id": "meta-llama/Llama-3.1-8B", "object": "model", "max_model_len": 32768},
            {"id": "other", "object": "model"},
        ],
    }
    found = openai_compat.models_from_listing(listing, "vllm")
    assert [(m.name, m.context_window, m.running) for m in found] == [
        ("meta-llama/Llama-3.1-8B", 32768, True),
        ("other", None, True),
    ]
    assert openai_compat.models_from_listing(listing, "openai")[0].running is None


async def test_make_runtime_picks_the_adapter_by_protocol() -> None:
    async with new_http_client() as client:
        _check_make_runtime(client)


def _check_make_runtime(client: httpx.AsyncClient) -> None:
    assert isinstance(make_runtime("ollama", "http://h:11434", client), OllamaRuntime)
    for kind in ("openai", "vllm", "llamacpp", "lmstudio"):
        runtime = make_runtime(kind, "http://h:1", client)
        assert isinstance(runtime, OpenAICompatRuntime)
        assert runtime.kind == kind
    with pytest.raises(ValueError, match="unknown runtime kind"):
        make_runtime("triton", "http://h:1", client)


# --- both adapters against the simulator ---------------------------------------------------

TOKENS = 16
PROTOCOLS: list[RuntimeKind] = ["ollama", "vllm"]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    models = [SimModel("llama3:8b"), SimModel("llava:7b", vision=True)]
    async with Simulator(models=models, tokens=TOKENS) as simulator:
        yield simulator


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_http_client() as client:
        yield client


@pytest.fixture(params=PROTOCOLS)
def runtime(
    request: pytest.FixtureRequest, sim: Simulator, http_client: httpx.AsyncClient
) -> Runtime:
    kind: RuntimeKind = request.param
    return make_runtime(kind, sim.url, http_client)


def ask(
    text: str, model: str = "llama3:8b", images: list[str] | None = None, **params: Any
) -> ChatCall:
    message = Message(role="user", content=text, images=images or [])
    return ChatCall(model, [Message(role="system", content="be brief"), message], Params(**params))


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


async def collect_until_error(
    events: AsyncIterator[StreamEvent],
) -> tuple[list[StreamEvent], InferbusError]:
    """The events a stream gave before it failed, and the failure (the test fails if none)."""
    received: list[StreamEvent] = []
    try:
        async for event in events:
            received.append(event)
    except InferbusError as error:
        return received, error
    raise AssertionError(f"the stream ended without an error after {received}")


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.parametrize("kind", ["ollama", "vllm", "llamacpp", "lmstudio", "openai"])
async def test_health_answers_with_latency(
    kind: RuntimeKind, sim: Simulator, http_client: httpx.AsyncClient
) -> None:
    latency_ms = await make_runtime(kind, sim.url, http_client).health()
    assert 0 < latency_ms < 2000


async def test_list_models_names_what_the_runtime_serves(runtime: Runtime) -> None:
    models = {model.name: model for model in await runtime.list_models()}
    assert set(models) == {"llama3:8b", "llava:7b"}
    assert models["llama3:8b"].context_window == 8192
    assert models["llama3:8b"].running is True


async def test_ollama_show_reports_vision_capability(
    sim: Simulator, http_client: httpx.AsyncClient
) -> None:
    info = await OllamaRuntime(sim.url, http_client).show_model("llava:7b")
    assert "vision" in info.capabilities
    assert info.context_window == 8192


async def test_chat_returns_the_generated_text_and_usage(runtime: Runtime, sim: Simulator) -> None:
    reply = await runtime.chat(ask("hello there"), timeout_s=5)
    assert reply.text == expected_text("llama3:8b", "hello there", TOKENS)
    assert reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, TOKENS)
    assert sim.calls["llama3:8b"] == 1


async def test_max_tokens_caps_the_answer(runtime: Runtime) -> None:
    reply = await runtime.chat(ask("hello there", max_tokens=3, temperature=0), timeout_s=5)
    assert reply.text == expected_text("llama3:8b", "hello there", 3)
    assert reply.finish_reason == "length"
    assert reply.usage.completion_tokens == 3


async def test_stream_reassembles_to_the_same_text_and_ends_once(runtime: Runtime) -> None:
    events = await collect(runtime.stream(ask("tell me more"), timeout_s=5))
    *deltas, end = events
    assert all(isinstance(event, StreamDelta) for event in deltas)
    assert "".join(e.text for e in deltas if isinstance(e, StreamDelta)) == expected_text(
        "llama3:8b", "tell me more", TOKENS
    )
    assert len(deltas) == TOKENS
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "stop"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (5, TOKENS)


async def test_unknown_model_is_model_not_found(runtime: Runtime) -> None:
    with pytest.raises(InferbusError) as chat_error:
        await runtime.chat(ask("hi", model="mistral:7b"), timeout_s=5)
    with pytest.raises(InferbusError) as stream_error:
        await collect(runtime.stream(ask("hi", model="mistral:7b"), timeout_s=5))
    assert chat_error.value.code == stream_error.value.code == ErrorCode.MODEL_NOT_FOUND
    assert "mistral:7b" in chat_error.value.message


async def test_runtime_error_is_backend_error_and_retryable(
    runtime: Runtime, sim: Simulator
) -> None:
    sim.set_fault("llama3:8b", Fault("error", count=1))
    with pytest.raises(InferbusError) as caught:
        await runtime.chat(ask("hi"), timeout_s=5)
    assert caught.value.code == ErrorCode.BACKEND_ERROR
    assert caught.value.retryable
    assert (await runtime.chat(ask("hi"), timeout_s=5)).text  # the fault was used up


async def test_context_overflow_is_context_exceeded(runtime: Runtime, sim: Simulator) -> None:
    sim.set_fault("llama3:8b", Fault("context_exceeded", count=1))
    with pytest.raises(InferbusError) as caught:
        await runtime.chat(ask("hi"), timeout_s=5)
    assert caught.value.code == ErrorCode.CONTEXT_EXCEEDED
    assert not caught.value.retryable


@pytest.mark.parametrize("kind", PROTOCOLS)
async def test_stopped_runtime_is_unavailable(
    kind: RuntimeKind, sim: Simulator, http_client: httpx.AsyncClient
) -> None:
    runtime = make_runtime(kind, sim.url, http_client)
    await runtime.chat(ask("warm up a keep-alive connection"), timeout_s=5)
    await sim.stop()
    for attempt in (runtime.health(), runtime.chat(ask("hi"), timeout_s=5)):
        with pytest.raises(InferbusError) as caught:
            await attempt
        assert caught.value.code == ErrorCode.BACKEND_UNAVAILABLE
    with pytest.raises(InferbusError) as caught:
        await collect(runtime.stream(ask("hi"), timeout_s=5))
    assert caught.value.code == ErrorCode.BACKEND_UNAVAILABLE


async def test_nothing_listening_is_unavailable_not_a_deadline(
    http_client: httpx.AsyncClient,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for kind in PROTOCOLS:
        with pytest.raises(InferbusError) as caught:
            await make_runtime(kind, f"http://127.0.0.1:{port}", http_client).chat(
                ask("hi"), timeout_s=5
            )
        assert caught.value.code == ErrorCode.BACKEND_UNAVAILABLE


async def test_connection_dropped_before_an_answer_is_unavailable(
    runtime: Runtime, sim: Simulator
) -> None:
    sim.set_fault("llama3:8b", Fault("drop", count=1))
    with pytest.raises(InferbusError) as caught:
        await runtime.chat(ask("hi"), timeout_s=5)
    assert caught.value.code == ErrorCode.BACKEND_UNAVAILABLE


async def test_hanging_runtime_hits_the_deadline(runtime: Runtime, sim: Simulator) -> None:
    sim.set_fault("llama3:8b", Fault("hang"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InferbusError) as chat_error:
        await runtime.chat(ask("hi"), timeout_s=0.2)
    with pytest.raises(InferbusError) as stream_error:
        await collect(runtime.stream(ask("hi"), timeout_s=0.2))
    assert chat_error.value.code == stream_error.value.code == ErrorCode.DEADLINE_EXCEEDED
    assert loop.time() - started < 1.5


async def test_trickling_stream_still_ends_at_the_deadline(
    runtime: Runtime, sim: Simulator
) -> None:
    sim.token_interval_ms = 100
    received, error = await collect_until_error(runtime.stream(ask("hi"), timeout_s=0.35))
    assert error.code == ErrorCode.DEADLINE_EXCEEDED
    assert 1 <= len(received) < TOKENS


async def test_slow_first_byte_within_the_deadline_still_answers(
    runtime: Runtime, sim: Simulator
) -> None:
    sim.set_fault("llama3:8b", Fault("slow_first_byte", count=1, delay_ms=100))
    reply = await runtime.chat(ask("hi"), timeout_s=5)
    assert reply.text == expected_text("llama3:8b", "hi", TOKENS)


async def test_stream_dropped_mid_body_raises_after_the_chunks_sent(
    runtime: Runtime, sim: Simulator
) -> None:
    sim.set_fault("llama3:8b", Fault("drop", count=1, after_chunks=3))
    received, error = await collect_until_error(runtime.stream(ask("hi"), timeout_s=5))
    assert error.code == ErrorCode.BACKEND_UNAVAILABLE
    assert "mid-stream" in error.message
    assert [type(event) for event in received] == [StreamDelta] * 3


async def test_error_inside_a_stream_is_backend_error(runtime: Runtime, sim: Simulator) -> None:
    sim.set_fault("llama3:8b", Fault("error", count=1, after_chunks=2))
    received, error = await collect_until_error(runtime.stream(ask("hi"), timeout_s=5))
    assert error.code == ErrorCode.BACKEND_ERROR
    assert len(received) == 2


@pytest.mark.parametrize(
    "image", [PNG_B64, f"data:image/png;base64,{PNG_B64}"], ids=["raw", "data-uri"]
)
async def test_image_reaches_a_vision_model(runtime: Runtime, sim: Simulator, image: str) -> None:
    reply = await runtime.chat(ask("what is this", "llava:7b", [image]), timeout_s=5)
    assert reply.text == expected_text("llava:7b", "what is this", TOKENS)
    # The same image sent to a text-only model is refused: proof that it went over the wire.
    with pytest.raises(InferbusError) as caught:
        await runtime.chat(ask("what is this", "llama3:8b", [image]), timeout_s=5)
    assert caught.value.code == ErrorCode.BAD_REQUEST  # the request's fault: neutral
    assert not caught.value.retryable


async def test_stopping_a_stream_early_closes_the_connection(
    runtime: Runtime, sim: Simulator
) -> None:
    sim.token_interval_ms = 50
    async with contextlib.aclosing(runtime.stream(ask("hi"), timeout_s=10)) as events:
        first = await anext(events)
        assert isinstance(first, StreamDelta)
        assert sim.open_connections == 1
    assert await until(lambda: sim.open_connections == 0, timeout_s=1.0)


async def test_cancelled_consumer_closes_the_connection(runtime: Runtime, sim: Simulator) -> None:
    sim.token_interval_ms = 50

    async def consume() -> None:
        async with contextlib.aclosing(runtime.stream(ask("hi"), timeout_s=10)) as events:
            async for _ in events:
                pass

    task = asyncio.create_task(consume())
    assert await until(lambda: sim.open_connections == 1)
    await asyncio.sleep(0.08)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await until(lambda: sim.open_connections == 0, timeout_s=1.0)


async def test_api_key_goes_as_bearer_and_never_into_errors(sim: Simulator) -> None:
    seen: list[str | None] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.headers.get("authorization"))

    # A plain httpx client: ours skips event hooks (see RuntimeClient).
    async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
        for kind in PROTOCOLS:
            runtime = make_runtime(kind, sim.url, client, api_key=API_KEY)
            await runtime.chat(ask("hi"), timeout_s=5)
            with pytest.raises(InferbusError) as caught:
                await runtime.chat(ask("hi", model="nope"), timeout_s=5)
            assert API_KEY not in str(caught.value)
        plain = make_runtime("vllm", sim.url, client)
        await plain.chat(ask("hi"), timeout_s=5)
    assert seen == [f"Bearer {API_KEY}"] * 4 + [None]


async def test_http_client_ignores_proxy_environment(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    async with new_http_client() as client:
        assert (await make_runtime("ollama", sim.url, client).chat(ask("hi"), timeout_s=5)).text


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, b'{"error": {"message": "Invalid API Key", "type": "authentication_error"}}'),
        (400, b'{"error": {"message": "Incorrect API key provided: sk-a...", "code": null}}'),
    ],
)
def test_a_refused_key_is_the_nodes_fault_whatever_the_status(status: int, body: bytes) -> None:
    error = classify_http_error(status, body, {})
    assert error.reason == Reason.AUTH
    assert error.code == ErrorCode.BACKEND_ERROR  # never BAD_REQUEST: the caller did nothing
    assert refused_our_key(error)
