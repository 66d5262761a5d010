"""The Ollama adapter: `/api/chat`, `/api/generate` (raw prompts), `/api/embed`,
`/api/tags`, `/api/ps`, `/api/show`, `/api/version`.

Wire format checked against ollama/ollama `docs/api.md`, `docs/api/streaming.mdx`,
`docs/api/errors.mdx` and `api/types.go` (ChatResponse, Metrics, Options,
ListModelResponse, ProcessModelResponse with `context_length`, ShowResponse with
`model_info` and `capabilities`), snapshot of 2026-08:
- `/api/chat` streams NDJSON *by default*; `"stream": false` gives one object. The last
  object has `"done": true`, `done_reason`, `prompt_eval_count`, `eval_count` (both
  `omitempty`: a fully cached prompt reports no `prompt_eval_count`).
- An error after the stream started is one more NDJSON line `{"error": "..."}`.
- Images are raw base64 strings in a message's `images`; Ollama does not fetch URLs.
- Sampling parameters go in `options`: temperature, top_p, num_predict, stop (a list), seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from services.errors import ErrorCode, InferbusError
from services.images import is_url
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
from services.runtimes.forced_tools import as_forced_reply, as_forced_stream, forced_call
from services.runtimes.http import RuntimeSession
from services.runtimes.ollama_features import (
    as_deltas,
    embed_body,
    feature_fields,
    finish_reason_of,
    logprob_entries,
    ollama_messages,
    tool_calls_of,
    vectors_of,
)
from services.wire import Message, Params, Usage

HEALTH_TIMEOUT_S = 2.0
LIST_TIMEOUT_S = 10.0


class OllamaRuntime:
    """One Ollama server. Stateless apart from its URLs; share the httpx client."""

    kind: RuntimeKind

    def __init__(self, url: str, client: httpx.AsyncClient, *, api_key: str | None = None):
        self.kind = "ollama"
        self.url = url.rstrip("/")
        self._http = RuntimeSession(client, api_key)
        self._secrets = self._http.secrets
        self._chat_url = httpx.URL(f"{self.url}/api/chat")
        self._generate_url = httpx.URL(f"{self.url}/api/generate")
        self._version_url = httpx.URL(f"{self.url}/api/version")
        self._tags_url = httpx.URL(f"{self.url}/api/tags")
        self._ps_url = httpx.URL(f"{self.url}/api/ps")
        self._show_url = httpx.URL(f"{self.url}/api/show")
        self._embed_url = httpx.URL(f"{self.url}/api/embed")

    def __repr__(self) -> str:
        return f"OllamaRuntime({self.url!r})"

    async def health(self) -> float:
        """`GET /api/version`: the cheapest call that proves the server answers."""
        started = time.perf_counter()
        await self._http.get_json(self._version_url, timeout_s=HEALTH_TIMEOUT_S)
        return (time.perf_counter() - started) * 1000.0

    async def list_models(self) -> list[ModelInfo]:
        """Installed models (`/api/tags`), marked running when `/api/ps` lists them.

        A failing `/api/ps` (very old Ollama) leaves `running` unknown rather than failing
        discovery. Capabilities (vision, completion, tools...), family and the trained
        context length come from `/api/show`, one call per model, all at once; a model
        whose show fails keeps what the listing said.
        """
        tags: Any
        ps: Any
        tags, ps = await asyncio.gather(
            self._http.get_json(self._tags_url, timeout_s=LIST_TIMEOUT_S),
            self._http.get_json(self._ps_url, timeout_s=LIST_TIMEOUT_S),
            return_exceptions=True,
        )
        if isinstance(tags, BaseException):
            raise tags
        listed = models_from_listing(tags, None if isinstance(ps, BaseException) else ps)
        shown = await asyncio.gather(
            *(self.show_model(model.name) for model in listed), return_exceptions=True
        )
        return [
            with_show(model, show) if isinstance(show, ModelInfo) else model
            for model, show in zip(listed, shown, strict=True)
        ]

    async def show_model(self, name: str) -> ModelInfo:
        """`POST /api/show`: family, capabilities and the model's trained context length."""
        body = await self._http.post_json(self._show_url, {"model": name}, timeout_s=LIST_TIMEOUT_S)
        return model_from_show(name, body)

    async def describe(self, model: ModelInfo, *, verbose: bool) -> dict[str, Any] | None:
        """`POST /api/show`, as the server answers it (the router's `/api/show` passes it on)."""
        body = await self._http.post_json(
            self._show_url,
            {"model": model.runtime_id or model.name, "verbose": verbose},
            timeout_s=LIST_TIMEOUT_S,
        )
        if not isinstance(body, dict):
            raise invalid_response("/api/show answer is not an object")
        return body

    def _request(self, call: ChatCall, *, stream: bool) -> tuple[httpx.URL, dict[str, Any]]:
        """A raw prompt, or one with a template of its own, goes to `/api/generate`,
        everything else to `/api/chat`."""
        if call.raw_prompt is not None:
            return self._generate_url, generate_body(call, stream=stream)
        if call.extra.get("template"):
            return self._generate_url, templated_body(call, stream=stream)
        return self._chat_url, chat_body(call, stream=stream)

    async def chat(self, call: ChatCall, *, timeout_s: float) -> ChatReply:
        forced = forced_call(call)
        reply = await self._chat(call, timeout_s=timeout_s)
        return reply if forced is None else as_forced_reply(reply, forced)

    async def _chat(self, call: ChatCall, *, timeout_s: float) -> ChatReply:
        url, body = self._request(call, stream=False)
        data = await self._http.post_json(url, body, timeout_s=timeout_s)
        if not isinstance(data, dict):
            raise invalid_response("chat answer is not an object")
        if "error" in data:
            raise classify_stream_error(data, secrets=self._secrets)
        message = data.get("message")
        if "response" in data and message is None:  # /api/generate
            message = {"content": data["response"]}
        if not isinstance(message, dict):
            raise invalid_response("chat answer has no message")
        calls = tool_calls_of(message)
        logprobs = logprob_entries(data)
        return ChatReply(
            text=message.get("content") or "",
            finish_reason=finish_reason_of(data.get("done_reason"), bool(calls)),
            usage=usage_of(data),
            tool_calls=calls or None,
            logprobs={"content": logprobs} if logprobs else None,
            timings=timings_of(data),
        )

    async def embed(self, call: EmbedCall, *, timeout_s: float) -> EmbedReply:
        """`POST /api/embed`; `prompt_eval_count` is the tokens embedded."""
        data = await self._http.post_json(self._embed_url, embed_body(call), timeout_s=timeout_s)
        if isinstance(data, dict) and "error" in data:
            raise classify_stream_error(data, secrets=self._secrets)
        # Millions of numbers are checked one by one: off the event loop.
        vectors = await asyncio.to_thread(vectors_of, data)
        return EmbedReply(vectors=vectors, usage=usage_of(data), timings=timings_of(data))

    async def stream(
        self, call: ChatCall, *, timeout_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """NDJSON lines → StreamDelta per non-empty piece, then one StreamEnd.

        The line with `"done": true` ends the stream; reaching the end of the body without
        it raises BACKEND_ERROR. Use `contextlib.aclosing` so stopping early closes the
        connection at once. A forced tool call's JSON is answered as that call.
        """
        forced = forced_call(call)
        async with contextlib.aclosing(self._stream(call, timeout_s=timeout_s)) as events:
            pieces = events if forced is None else as_forced_stream(events, forced)
            async for event in pieces:
                yield event

    async def _stream(
        self, call: ChatCall, *, timeout_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        end: StreamEnd | None = None
        calls_seen = 0
        url, body = self._request(call, stream=True)
        lines = self._http.stream_lines(url, body, deadline=deadline)
        try:
            async for line in lines:
                if end is not None:
                    continue  # drain to the end of the body so the connection is reused
                delta, end = _parse_line(line, self._secrets, calls_seen)
                if delta.text or delta.tool_calls or delta.logprobs:
                    calls_seen += len(delta.tool_calls or ())
                    yield delta
        finally:
            await lines.aclose()
        if end is None:
            raise InferbusError(
                ErrorCode.BACKEND_ERROR, "Ollama stream ended without its final `done` line"
            )
        yield StreamEnd(
            finish_reason_of(end.finish_reason, calls_seen > 0), end.usage, timings=end.timings
        )


def _parse_line(
    line: str, secrets: tuple[str, ...], calls_seen: int = 0
) -> tuple[StreamDelta, StreamEnd | None]:
    """One NDJSON line: what it adds to the answer, and the end when it is the last."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise invalid_response(f"stream line is not JSON: {line[:80]!r}") from exc
    if not isinstance(data, dict):
        raise invalid_response("stream line is not an object")
    if "error" in data:
        raise classify_stream_error(data, secrets=secrets)
    message = data.get("message")
    if message is None and "response" in data:  # /api/generate
        message = {"content": data["response"]}
    message = message if isinstance(message, dict) else {}
    calls = tool_calls_of(message, calls_seen)
    delta = StreamDelta(
        text=message.get("content") or "",
        tool_calls=as_deltas(calls, calls_seen) or None,
        logprobs=logprob_entries(data) or None,
    )
    if data.get("done"):
        end = StreamEnd(data.get("done_reason"), usage_of(data), timings=timings_of(data))
        return delta, end
    return delta, None


def chat_body(call: ChatCall, *, stream: bool) -> dict[str, Any]:
    """The `/api/chat` request for a call; options only for parameters that are set."""
    features, extra_options = feature_fields(call)
    body: dict[str, Any] = {
        "model": call.model,
        "messages": ollama_messages(call.messages, ollama_message),
        "stream": stream,
        **features,
    }
    options = {**ollama_options(call.params), **extra_options}
    if options:
        body["options"] = options
    return body


def generate_body(call: ChatCall, *, stream: bool) -> dict[str, Any]:
    """`/api/generate` for a raw prompt. With a suffix the model's template must run (it
    is what places prompt and suffix around the gap), so only a suffix-less job is `raw`."""
    features, extra_options = feature_fields(call)
    body: dict[str, Any] = {
        "model": call.model,
        "prompt": call.raw_prompt or "",
        "stream": stream,
        **features,
    }
    if call.suffix is not None:
        body["suffix"] = call.suffix
    else:
        body["raw"] = True
    options = {**ollama_options(call.params), **extra_options}
    if options:
        body["options"] = options
    return body


def templated_body(call: ChatCall, *, stream: bool) -> dict[str, Any]:
    """`/api/generate` for a prompt with its own `template` (in `extra`, placed by
    `feature_fields`): the user message is the `prompt` (with its images), a system
    message the `system`; Ollama renders them with that template instead of the model's.
    The job's shape (one user message, perhaps a system one) is checked before
    (services/needs.py)."""
    features, extra_options = feature_fields(call)
    user = call.messages[-1]
    body: dict[str, Any] = {"model": call.model, "prompt": user.text, "stream": stream}
    system = next((message.text for message in call.messages if message.role == "system"), "")
    if system:
        body["system"] = system
    images = user.all_images
    if images:
        body["images"] = [ollama_image(image) for image in images]
    body.update(features)
    options = {**ollama_options(call.params), **extra_options}
    if options:
        body["options"] = options
    return body


def ollama_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.text}
    images = message.all_images
    if images:
        out["images"] = [ollama_image(image) for image in images]
    return out


def ollama_image(image: str) -> str:
    """Raw base64, as Ollama wants it: a `data:...;base64,` prefix is stripped.

    Ollama cannot fetch URLs and we do not fetch them for it (a worker that downloads
    whatever a job names is an SSRF hole): an http(s) image is a BAD_REQUEST here.
    """
    if image.startswith("data:"):
        header, sep, payload = image.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InferbusError(ErrorCode.BAD_REQUEST, "image data URI must be base64")
        return payload
    if is_url(image):
        raise InferbusError(
            ErrorCode.BAD_REQUEST, "Ollama takes images inline as base64, not as URLs"
        )
    return image


def ollama_options(params: Params) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if params.temperature is not None:
        options["temperature"] = params.temperature
    if params.top_p is not None:
        options["top_p"] = params.top_p
    if params.max_tokens is not None:
        options["num_predict"] = params.max_tokens
    if params.stop is not None:
        options["stop"] = [params.stop] if isinstance(params.stop, str) else params.stop
    if params.seed is not None:
        options["seed"] = params.seed
    return options


def usage_of(data: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=data.get("prompt_eval_count") or 0,
        completion_tokens=data.get("eval_count") or 0,
    )


def _duration_ms(data: dict[str, Any], key: str) -> float | None:
    """One of Ollama's durations (ns) in ms; None when absent or not a positive number."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return value / 1e6  # not rounded: a few hundred ns stay a non-zero duration


def timings_of(data: dict[str, Any]) -> RuntimeTimings | None:
    """Ollama's Metrics (nanoseconds; omitted when zero) in ms; None when it sent none."""
    timings = RuntimeTimings(
        load_ms=_duration_ms(data, "load_duration"),
        prompt_ms=_duration_ms(data, "prompt_eval_duration"),
        eval_ms=_duration_ms(data, "eval_duration"),
    )
    return timings if timings != RuntimeTimings() else None


def models_from_listing(tags: Any, ps: Any | None) -> list[ModelInfo]:
    """ModelInfo per model of `/api/tags`, plus loaded ones `/api/tags` does not list.

    `ps` None means "unknown", so `running` stays None. `/api/ps`'s `context_length` is
    the window the loaded model really has; `details.context_length` (newer servers)
    is the fallback.
    """
    if not isinstance(tags, dict) or not isinstance(tags.get("models"), list):
        raise invalid_response("/api/tags has no `models` list")
    loaded: dict[str, dict[str, Any]] = {}
    if isinstance(ps, dict):
        for entry in ps.get("models") or []:
            if isinstance(entry, dict) and _name(entry):
                loaded[_name(entry)] = entry
    installed = [e for e in tags["models"] if isinstance(e, dict) and _name(e)]
    listed = {_name(entry) for entry in installed}
    extra = [entry for name, entry in loaded.items() if name not in listed]
    return [_model_info(entry, loaded, ps_known=ps is not None) for entry in installed + extra]


def _model_info(
    entry: dict[str, Any], loaded: dict[str, dict[str, Any]], *, ps_known: bool
) -> ModelInfo:
    name = _name(entry)
    details = entry.get("details") or {}
    details = details if isinstance(details, dict) else {}
    running_entry = loaded.get(name) or {}
    context = running_entry.get("context_length") or details.get("context_length")
    return ModelInfo(
        name=name,
        size_bytes=_int(entry.get("size")),
        running=bool(running_entry) if ps_known else None,
        context_window=context or None,
        family=details.get("family") or None,
        capabilities=tuple(entry.get("capabilities") or ()),
        digest=_text(entry.get("digest")),
        modified_at=_text(entry.get("modified_at")),
        format=_text(details.get("format")),
        parameter_size=_text(details.get("parameter_size")),
        quantization_level=_text(details.get("quantization_level")),
        size_vram=_int(running_entry.get("size_vram")),
        expires_at=_text(running_entry.get("expires_at")),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model") or "")


def with_show(listed: ModelInfo, shown: ModelInfo) -> ModelInfo:
    """The listing's facts (size, running, the loaded window) plus what `/api/show` adds."""
    return dataclasses.replace(
        listed,
        context_window=listed.context_window or shown.context_window,
        family=listed.family or shown.family,
        capabilities=shown.capabilities or listed.capabilities,
    )


def model_from_show(name: str, show: Any) -> ModelInfo:
    """`/api/show`: context length is `model_info["<architecture>.context_length"]`."""
    if not isinstance(show, dict):
        raise invalid_response("/api/show answer is not an object")
    details = show.get("details") or {}
    info = show.get("model_info") or {}
    arch = info.get("general.architecture")
    context = info.get(f"{arch}.context_length") if arch else None
    if context is None:
        context = next(
            (v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)),
            None,
        )
    return ModelInfo(
        name=name,
        context_window=context,
        family=details.get("family") or arch or None,
        capabilities=tuple(show.get("capabilities") or ()),
    )
