"""The OpenAI-compatible adapter: vLLM, llama.cpp server, LM Studio, OpenAI and the like.

A raw prompt (a legacy completion) goes to `/v1/completions` instead of chat completions:
the same SSE framing, `choices[].text` in place of `message`/`delta` content.

Wire format checked against openai/openai-openapi `openapi.yaml` (2026-08 snapshot:
CreateChatCompletionResponse, CreateChatCompletionStreamResponse, ChatCompletionStreamOptions,
ChatCompletionRequestMessageContentPartImage, Error/ErrorResponse, Model), llama.cpp
`tools/server/server-common.cpp` / `server-http.cpp` (error objects, `format_sse`,
`/health`, "Loading model" 503, `data:image/...;base64,` image parts) and vLLM's
`entrypoints/openai/protocol.py` (`ModelCard.max_model_len`, ErrorResponse):
- Request: `messages` whose content is a string, or parts `{"type": "text"}` and
  `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..." | "https://..."}}`;
  `temperature`, `top_p`, `max_tokens`, `stop`, `seed` at top level.
- Stream: SSE `data: {chunk}` lines, `choices[0].delta.content`, `finish_reason` on the
  last content chunk, with `stream_options.include_usage` one more chunk with `usage` and
  empty `choices`, then `data: [DONE]`. A mid-stream error is a `data: {"error": {...}}`
  chunk (older llama.cpp: an `error: {...}` line).
- `/v1/models`: `data[].id`; vLLM adds `max_model_len`. llama.cpp's health probe is
  `/health` (503 "Loading model" while it loads: `RuntimeLoading`) and then `/v1/models`,
  because `/health` needs no API key and a wrong key must show at the probe, not in every
  job; its names, context window and slots are read by `services.runtimes.llamacpp`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from services.errors import ErrorCode, InferbusError
from services.images import image_type, is_url
from services.runtimes.base import (
    ChatCall,
    ChatReply,
    EmbedCall,
    EmbedReply,
    ModelInfo,
    RuntimeKind,
    RuntimeTimings,
    StreamDelta,
    StreamEnd,
    StreamEvent,
)
from services.runtimes.errors import classify_stream_error, invalid_response
from services.runtimes.http import RuntimeSession
from services.runtimes.llamacpp import (
    PrefillEcho,
    context_of_entry,
    llamacpp_models,
    without_prefill_echo,
)
from services.runtimes.openai_features import (
    capabilities_from_props,
    embed_body,
    feature_fields,
    logprobs_of,
    message_fields,
    sampling_fields,
    tool_calls_of,
    tool_deltas_of,
    vectors_of,
)
from services.wire import Message, Params, Usage

HEALTH_TIMEOUT_S = 2.0
LIST_TIMEOUT_S = 10.0
# Runtimes that list only what they have loaded: every listed model is running.
_LISTS_LOADED_ONLY: frozenset[RuntimeKind] = frozenset({"vllm", "llamacpp"})
_CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length")


class OpenAICompatRuntime:
    """One OpenAI-compatible server; `kind` says which product, the protocol is the same."""

    kind: RuntimeKind

    def __init__(
        self,
        kind: RuntimeKind,
        url: str,
        client: httpx.AsyncClient,
        *,
        api_key: str | None = None,
    ):
        self.kind = kind
        self.url = url.rstrip("/")
        self._http = RuntimeSession(client, api_key)
        self._secrets = self._http.secrets
        base = api_base(self.url)
        self._chat_url = httpx.URL(f"{base}/chat/completions")
        self._models_url = httpx.URL(f"{base}/models")
        self._embeddings_url = httpx.URL(f"{base}/embeddings")
        self._completions_url = httpx.URL(f"{base}/completions")
        root = base.removesuffix("/v1")
        self._props_url = httpx.URL(f"{root}/props") if kind == "llamacpp" else None
        self._health_url = httpx.URL(f"{root}/health") if kind == "llamacpp" else self._models_url

    def __repr__(self) -> str:
        return f"OpenAICompatRuntime({self.kind!r}, {self.url!r})"

    async def health(self) -> float:
        """`GET /v1/models` (llama.cpp: `/health` first, which is 503 until the model is
        loaded, then `/v1/models`, which needs the API key when one is set)."""
        started = time.perf_counter()
        if self._health_url != self._models_url:
            try:
                await self._http.get_json(self._health_url, timeout_s=HEALTH_TIMEOUT_S)
            except InferbusError as error:
                # llama-cpp-python's server has no /health (404): its model list is the probe.
                if error.code != ErrorCode.MODEL_NOT_FOUND:
                    raise
        await self._http.get_json(self._models_url, timeout_s=HEALTH_TIMEOUT_S)
        return (time.perf_counter() - started) * 1000.0

    async def list_models(self) -> list[ModelInfo]:
        """`/v1/models`; for llama.cpp also `/props` (slots, context, tools in the chat
        template, vision), which llama-cpp-python's server lacks (404): then nothing is added."""
        models = models_from_listing(
            await self._http.get_json(self._models_url, timeout_s=LIST_TIMEOUT_S), self.kind
        )
        if self._props_url is None:
            return models
        props = await self._props(self._props_url)
        models = llamacpp_models(models, props)
        capabilities = capabilities_from_props(props)
        if not capabilities or len(models) != 1:
            return models
        return [dataclasses.replace(models[0], capabilities=capabilities)]

    async def describe(self, model: ModelInfo, *, verbose: bool) -> dict[str, Any] | None:
        """Nothing beyond discovery: OpenAI's API describes a model by its id only."""
        return None

    async def _props(self, url: httpx.URL) -> Any:
        """llama.cpp's `/props`; None where the server has none (llama-cpp-python)."""
        try:
            return await self._http.get_json(url, timeout_s=LIST_TIMEOUT_S)
        except InferbusError as error:
            if error.code == ErrorCode.MODEL_NOT_FOUND:
                return None
            raise

    async def embed(self, call: EmbedCall, *, timeout_s: float) -> EmbedReply:
        """`POST /v1/embeddings`, floats, vectors back in input order."""
        data = await self._http.post_json(
            self._embeddings_url, embed_body(call), timeout_s=timeout_s
        )
        if isinstance(data, dict) and ("error" in data or data.get("object") == "error"):
            raise classify_stream_error(data, secrets=self._secrets)
        # Millions of numbers are checked one by one: off the event loop.
        vectors = await asyncio.to_thread(vectors_of, data)
        return EmbedReply(vectors=vectors, usage=usage_of(data.get("usage")))

    def _request(self, call: ChatCall, *, stream: bool) -> tuple[httpx.URL, dict[str, Any]]:
        """A raw prompt goes to `/v1/completions`, everything else to chat completions."""
        if call.raw_prompt is not None:
            return self._completions_url, completion_body(call, stream=stream)
        return self._chat_url, chat_body(call, stream=stream, kind=self.kind)

    async def chat(self, call: ChatCall, *, timeout_s: float) -> ChatReply:
        url, body = self._request(call, stream=False)
        data = await self._http.post_json(url, body, timeout_s=timeout_s)
        if not isinstance(data, dict):
            raise invalid_response("chat answer is not an object")
        if "error" in data or data.get("object") == "error":
            raise classify_stream_error(data, secrets=self._secrets)
        choices = data.get("choices")
        if not choices or not isinstance(choices[0], dict):
            raise invalid_response("chat answer has no choices")
        choice = choices[0]
        message = choice.get("message") or {}
        text = choice.get("text") if "text" in choice else message.get("content")
        return ChatReply(
            text=without_prefill_echo(text or "", self._echoed_prefill(call)),
            finish_reason=choice.get("finish_reason"),
            usage=usage_of(data.get("usage")),
            model=answer_model(data),
            tool_calls=tool_calls_of(message) or None,
            logprobs=logprobs_of(choice),
            timings=llamacpp_timings(data.get("timings")),
            stop_sequence=stop_string(choice.get("stop_reason")),
        )

    async def stream(
        self, call: ChatCall, *, timeout_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """SSE chunks → StreamDelta per non-empty content piece, then one StreamEnd.

        `data: [DONE]` ends the stream; a body that ends without it raises BACKEND_ERROR.
        Each `data:` line is taken as one event: no LLM server splits a chunk over several
        lines. Use `contextlib.aclosing` so stopping early closes the connection at once.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        reader = _SseChunks(self._secrets)
        echo = PrefillEcho(self._echoed_prefill(call))
        url, body = self._request(call, stream=True)
        lines = self._http.stream_lines(url, body, deadline=deadline)
        try:
            async for line in lines:
                if reader.done:
                    continue  # drain to the end of the body so the connection is reused
                delta = reader.feed(line)
                if delta is not None and delta.text:
                    delta = dataclasses.replace(delta, text=echo.feed(delta.text))
                    if not delta.text and not delta.tool_calls:
                        continue  # the echoed prefill, not new text
                if delta is not None:
                    yield delta
        finally:
            await lines.aclose()
        if not reader.done:
            raise InferbusError(
                ErrorCode.BACKEND_ERROR, "stream ended without its final `data: [DONE]`"
            )
        held = echo.flush()
        if held:
            yield StreamDelta(held)
        yield StreamEnd(
            finish_reason=reader.finish_reason,
            usage=usage_of(reader.usage),
            model=reader.model,
            timings=llamacpp_timings(reader.timings),
            stop_sequence=reader.stop_sequence,
        )

    def _echoed_prefill(self, call: ChatCall) -> str:
        """The prefill llama.cpp's server echoes in front of a continued answer
        (services/runtimes/llamacpp.py); "" for other servers and other calls."""
        if self.kind != "llamacpp" or not call.continue_final or call.raw_prompt is not None:
            return ""
        last = call.messages[-1].content if call.messages else None
        return last if isinstance(last, str) else ""


def stop_string(stop_reason: Any) -> str | None:
    """vLLM's `stop_reason`: the stop string that ended the answer; a stop token's id
    (an int) or null says no string did."""
    return stop_reason if isinstance(stop_reason, str) and stop_reason else None


class _SseChunks:
    """Reads SSE lines of a chat completion stream; remembers finish reason and usage."""

    def __init__(self, secrets: tuple[str, ...]):
        self._secrets = secrets
        self._error_event = False
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.timings: Any = None  # llama.cpp's, on its last chunks
        self.model: str | None = None
        self.stop_sequence: str | None = None

    def feed(self, line: str) -> StreamDelta | None:
        """One SSE line in; the text and tool-call pieces it carries out (often None)."""
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            if value == "[DONE]":
                self.done = True
                return None
            chunk = _json_or_text(value)
            if self._error_event or "error" in chunk:
                raise classify_stream_error(chunk, secrets=self._secrets)
            return self._chunk(chunk)
        if field == "error":  # older llama.cpp: `error: {...}`
            raise classify_stream_error(_json_or_text(value), secrets=self._secrets)
        if field == "event":
            self._error_event = value == "error"
        return None  # comments (`: keep-alive`), `id:`, `retry:`

    def _chunk(self, chunk: dict[str, Any]) -> StreamDelta | None:
        self.model = answer_model(chunk) or self.model
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        timings = chunk.get("timings")
        if timings:
            self.timings = timings
        choices = chunk.get("choices")
        if not choices:
            return None
        choice = choices[0]
        if not isinstance(choice, dict):
            return None
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.stop_sequence = stop_string(choice.get("stop_reason"))
        delta = choice.get("delta") or {}
        content = choice["text"] if "text" in choice else delta.get("content")  # completions
        text = content if isinstance(content, str) else ""
        tool_calls = tool_deltas_of(delta)
        logprobs = logprobs_of(choice)
        if not text and not tool_calls and logprobs is None:
            return None
        return StreamDelta(
            text,
            tool_calls=tool_calls or None,
            logprobs=logprobs["content"] if logprobs is not None else None,
        )


def _json_or_text(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise invalid_response(f"SSE data is not JSON: {value[:80]!r}") from exc
    if not isinstance(parsed, dict):
        raise invalid_response("SSE data is not an object")
    return parsed


def answer_model(data: dict[str, Any]) -> str | None:
    """The model an answer (or chunk) names, when it names one."""
    model = data.get("model")
    return model if isinstance(model, str) and model else None


def api_base(url: str) -> str:
    """The API root: a bare `http://host:port` gains `/v1`; any other path is kept as is
    (`https://api.groq.com/openai/v1`, `.../v1beta/openai`)."""
    url = url.rstrip("/")
    return url if httpx.URL(url).path not in ("", "/") else f"{url}/v1"


def chat_body(call: ChatCall, *, stream: bool, kind: RuntimeKind = "openai") -> dict[str, Any]:
    """The `/v1/chat/completions` request; parameters only when set."""
    body: dict[str, Any] = {
        "model": call.model,
        "messages": [openai_message(message) for message in call.messages],
    }
    body.update(openai_params(call.params))
    body.update(sampling_fields(call.params))
    body.update(feature_fields(call, kind))
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def completion_body(call: ChatCall, *, stream: bool) -> dict[str, Any]:
    """The legacy `/v1/completions` request for a raw prompt (and a suffix, if any)."""
    body: dict[str, Any] = {"model": call.model, "prompt": call.raw_prompt or ""}
    if call.suffix is not None:
        body["suffix"] = call.suffix
    body.update(openai_params(call.params))
    body.update(sampling_fields(call.params))
    body.update(feature_fields(call))
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def openai_message(message: Message) -> dict[str, Any]:
    images = message.all_images
    if not images:
        # An assistant message that only calls tools has no content (`null`, as OpenAI's).
        content = None if message.tool_calls and not message.text else message.text
        return {"role": message.role, "content": content, **message_fields(message)}
    parts: list[dict[str, Any]] = []
    text = message.text
    if text:
        parts.append({"type": "text", "text": text})
    parts.extend(
        {"type": "image_url", "image_url": {"url": openai_image_url(image)}} for image in images
    )
    return {"role": message.role, "content": parts}


def openai_image_url(image: str) -> str:
    """Data URIs pass through; raw base64 becomes a data URI. An http(s) URL is a
    BAD_REQUEST: the runtime would fetch it from inside the GPU network (SSRF), so URLs
    are fetched (or refused) before a job reaches an adapter (`images.remote_urls`)."""
    if image.startswith("data:"):
        return image
    if is_url(image):
        raise InferbusError(
            ErrorCode.BAD_REQUEST, "images go to the runtime inline as base64, not as URLs"
        )
    return f"data:{sniff_image_mime(image)};base64,{image}"


def sniff_image_mime(image_base64: str) -> str:
    """The image type from its first bytes; PNG when unknown (servers decode by content)."""
    head_b64 = image_base64[:16].strip()
    head_b64 += "=" * (-len(head_b64) % 4)
    try:
        head = base64.b64decode(head_b64)
    except (binascii.Error, ValueError):
        return "image/png"
    return image_type(head) or "image/png"


def openai_params(params: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params.temperature is not None:
        out["temperature"] = params.temperature
    if params.top_p is not None:
        out["top_p"] = params.top_p
    if params.max_tokens is not None:
        out["max_tokens"] = params.max_tokens
    if params.stop is not None:
        out["stop"] = params.stop
    if params.seed is not None:
        out["seed"] = params.seed
    return out


def llamacpp_timings(timings: Any) -> RuntimeTimings | None:
    """llama.cpp's `timings` (`prompt_ms`, `predicted_ms`); None when the server sent none."""
    if not isinstance(timings, dict):
        return None

    def ms(key: str) -> float | None:
        value = timings.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            return None
        return round(float(value), 3)

    found = RuntimeTimings(prompt_ms=ms("prompt_ms"), eval_ms=ms("predicted_ms"))
    return found if found != RuntimeTimings() else None


def usage_of(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    return Usage(
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
    )


def models_from_listing(listing: Any, kind: RuntimeKind) -> list[ModelInfo]:
    """`/v1/models` entries; context window from vLLM's `max_model_len` and look-alikes."""
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        raise invalid_response("/v1/models has no `data` list")
    running = True if kind in _LISTS_LOADED_ONLY else None
    found: list[ModelInfo] = []
    for entry in listing["data"]:
        if not isinstance(entry, dict) or not entry.get("id"):
            continue
        context = next(
            (entry[key] for key in _CONTEXT_KEYS if isinstance(entry.get(key), int)), None
        ) or context_of_entry(entry)
        meta = entry.get("meta")
        size = meta.get("size") if isinstance(meta, dict) else None
        found.append(
            ModelInfo(
                name=str(entry["id"]),
                size_bytes=size if isinstance(size, int) else None,
                running=running,
                context_window=context,
            )
        )
    return found
