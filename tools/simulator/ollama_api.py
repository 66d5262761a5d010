"""Ollama's native API, as Ollama's own server speaks it (api/types.go, server/routes.go).

Field names, omitted-when-zero metrics, NDJSON streaming with a final ``done: true``
object and ``{"error": "..."}`` bodies follow Ollama's Go types, so an adapter that works
here works against a real Ollama.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tools.simulator.feature_wire import ollama_fields, ollama_tool_calls, show_capabilities
from tools.simulator.features import logprob_entry
from tools.simulator.flow import (
    JSON_HEADERS,
    STATE_KEY,
    Timings,
    duration_metrics,
    json_bytes,
    json_response,
    serve_generation,
)
from tools.simulator.models import SimModel, count_words
from tools.simulator.plan import GenRequest, Plan, Rejection

OLLAMA_VERSION = "0.12.6"
_KEEP_ALIVE = timedelta(minutes=5)
_FOREVER = datetime(2318, 1, 1, tzinfo=UTC)  # keep_alive < 0: Ollama's now + 2^63 ns
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SECONDS_PER = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_RUNNER_CRASHED = "llama runner process has terminated: exit status 2"
# Bytes per parameter of a Q4_K_M GGUF: turns a size into Ollama's "parameter_size".
_Q4_BYTES_PER_PARAMETER = 4.85 / 8


def rfc3339_now() -> str:
    """A timestamp as Go marshals time.Time (RFC 3339 with fractional seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _nothing_kept(payload: dict[str, Any]) -> None:
    return None


class _OllamaWire:
    """What /api/chat and /api/generate share: errors and the final object's metrics;
    each request's `keep_alive` goes to `kept` (the catalog's `/api/ps` follows it)."""

    stream_headers: dict[str, str] = {"Content-Type": "application/x-ndjson"}  # noqa: RUF012

    def __init__(self, kept: Callable[[dict[str, Any]], None] = _nothing_kept) -> None:
        self._kept = kept

    def reject(self, rejection: Rejection, model: str) -> web.Response:
        if rejection.kind == "not_found":
            return json_response(404, {"error": f"model '{model}' not found"})
        if rejection.kind == "no_vision":
            return json_response(400, {"error": f"{model} does not support vision"})
        if rejection.kind == "no_tools":
            return json_response(
                400, {"error": f"registry.ollama.ai/library/{model} does not support tools"}
            )
        if rejection.kind == "no_chat":
            return json_response(400, {"error": f'"{model}" does not support chat'})
        if rejection.kind == "context_exceeded":
            return json_response(400, {"error": "the input length exceeds the context length"})
        if rejection.kind == "error":
            return json_response(
                500, {"error": "llama runner process has terminated: exit status 2"}
            )
        return json_response(400, {"error": rejection.message or "invalid request"})

    @staticmethod
    def final_fields(plan: Plan, timings: Timings) -> dict[str, Any]:
        """``done_reason`` and Ollama's Metrics; Go's omitempty drops zero counts."""
        # Ollama says `stop` after tool calls too; OpenAI's `tool_calls` is the adapter's.
        reason = "stop" if plan.finish_reason == "tool_calls" else plan.finish_reason
        fields: dict[str, Any] = {"done": True, "done_reason": reason}
        if plan.finish_reason == "load":
            return fields
        metrics = duration_metrics(timings)
        fields["total_duration"] = metrics["total_duration"]
        fields["load_duration"] = metrics["load_duration"]
        if plan.prompt_tokens:
            fields["prompt_eval_count"] = plan.prompt_tokens
        fields["prompt_eval_duration"] = metrics["prompt_eval_duration"]
        if plan.completion_tokens:
            fields["eval_count"] = plan.completion_tokens
        fields["eval_duration"] = metrics["eval_duration"]
        return fields


def _stream_flag(payload: dict[str, Any]) -> bool | Rejection:
    """Ollama streams unless told ``"stream": false`` (a missing or null flag streams)."""
    stream = payload.get("stream")
    if stream is None:
        return True
    if not isinstance(stream, bool):
        return Rejection("bad_request", "stream must be a boolean")
    return stream


def _num_predict(payload: dict[str, Any]) -> int | Rejection | None:
    options = payload.get("options")
    if options is None:
        return None
    if not isinstance(options, dict):
        return Rejection("bad_request", "options must be an object")
    limit = options.get("num_predict")
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        return Rejection("bad_request", "options.num_predict must be a number")
    # Ollama: -1 is "no limit", -2 "fill the context"; both mean uncapped here.
    return int(limit) if limit > 0 else None


def _has_images(images: Any) -> bool | Rejection:
    if images is None:
        return False
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        return Rejection("bad_request", "images must be a list of base64 strings")
    return bool(images)


def _common(payload: dict[str, Any]) -> tuple[str, bool, int | None] | Rejection:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return Rejection("bad_request", "model is required")
    stream = _stream_flag(payload)
    if isinstance(stream, Rejection):
        return stream
    limit = _num_predict(payload)
    if isinstance(limit, Rejection):
        return limit
    return model, stream, limit


_TEMPLATE_FIELD = re.compile(r"\{\{-?\s*\.(System|Prompt)\s*-?\}\}")


def render_template(template: str, *, system: str, prompt: str) -> str:
    """A request's own `template` as Ollama renders it, for the two fields a generate
    fills (`{{ .System }}`, `{{ .Prompt }}`); the rest of Go's template language is
    left as written."""
    values = {"System": system, "Prompt": prompt}
    return _TEMPLATE_FIELD.sub(lambda field: values[field.group(1)], template)


class OllamaChat(_OllamaWire):
    """POST /api/chat: ``message`` objects, streamed as NDJSON by default."""

    def parse(self, payload: dict[str, Any]) -> GenRequest | Rejection:
        common = _common(payload)
        if isinstance(common, Rejection):
            return common
        model, stream, limit = common
        self._kept(payload)
        messages = payload.get("messages") or []
        if not isinstance(messages, list):
            return Rejection("bad_request", "messages must be an array")
        words, last_user, with_images = 0, "", False
        for message in messages:
            if not isinstance(message, dict):
                return Rejection("bad_request", "each message must be an object")
            content = message.get("content") or ""
            if not isinstance(content, str):
                return Rejection("bad_request", "message content must be a string")
            images = _has_images(message.get("images"))
            if isinstance(images, Rejection):
                return images
            with_images = with_images or images
            words += count_words(content)
            role = message.get("role")
            if isinstance(role, str) and role.lower() == "user":
                last_user = content
        load_only = not messages
        features = ollama_fields(payload, messages)
        if isinstance(features, Rejection):
            return features
        return GenRequest(
            model=model,
            prompt_text=last_user,
            prompt_tokens=max(1, words),
            has_images=with_images,
            max_tokens=limit,
            stream=stream and not load_only,
            load_only=load_only,
            **features,
        )

    def complete(self, request: GenRequest, plan: Plan, timings: Timings) -> web.Response:
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        if plan.tool_calls:
            message["tool_calls"] = ollama_tool_calls(plan)
        body = {
            "model": request.model,
            "created_at": rfc3339_now(),
            "message": message,
            **self.final_fields(plan, timings),
        }
        if plan.logprobs:
            body["logprobs"] = [logprob_entry(piece) for piece in plan.pieces]
        return json_response(200, body)

    def encoder(self, request: GenRequest) -> _ChatEncoder:
        return _ChatEncoder(request.model, logprobs=request.logprobs)


class _ChatEncoder:
    def __init__(self, model: str, *, logprobs: bool = False) -> None:
        self._model = model
        self._logprobs = logprobs

    def open(self) -> bytes:
        return b""

    def piece(self, text: str) -> bytes:
        chunk: dict[str, Any] = {
            "model": self._model,
            "created_at": rfc3339_now(),
            "message": {"role": "assistant", "content": text},
            "done": False,
        }
        if self._logprobs:
            chunk["logprobs"] = [logprob_entry(text)]
        return json_bytes(chunk) + b"\n"

    def tool_call_events(self, plan: Plan) -> list[bytes]:
        return []  # Ollama streams each call whole, with `close`

    def close(self, plan: Plan, timings: Timings) -> bytes:
        calls = b""
        if plan.tool_calls:  # Ollama streams each call whole, before the final object
            message = {"role": "assistant", "content": "", "tool_calls": ollama_tool_calls(plan)}
            chunk = {"model": self._model, "created_at": rfc3339_now(), "message": message}
            calls = json_bytes({**chunk, "done": False}) + b"\n"
        final = {
            "model": self._model,
            "created_at": rfc3339_now(),
            "message": {"role": "assistant", "content": ""},
            **_OllamaWire.final_fields(plan, timings),
        }
        return calls + json_bytes(final) + b"\n"

    def error(self) -> bytes:
        return json_bytes({"error": "an error was encountered while running the model"}) + b"\n"


class OllamaGenerate(_OllamaWire):
    """POST /api/generate: a ``prompt`` in, ``response`` text out."""

    def parse(self, payload: dict[str, Any]) -> GenRequest | Rejection:
        common = _common(payload)
        if isinstance(common, Rejection):
            return common
        model, stream, limit = common
        self._kept(payload)
        prompt = payload.get("prompt") or ""
        system = payload.get("system") or ""
        template = payload.get("template") or ""
        if not all(isinstance(text, str) for text in (prompt, system, template)):
            return Rejection("bad_request", "prompt, system and template must be strings")
        images = _has_images(payload.get("images"))
        if isinstance(images, Rejection):
            return images
        load_only = not prompt and not images
        rendered = prompt
        if template and not payload.get("raw"):  # the answer shows the prompt it rendered
            rendered = render_template(template, system=system, prompt=prompt)
        return GenRequest(
            model=model,
            prompt_text=rendered,
            prompt_tokens=max(1, count_words(prompt) + count_words(system)),
            has_images=images,
            max_tokens=limit,
            stream=stream and not load_only,
            load_only=load_only,
        )

    def complete(self, request: GenRequest, plan: Plan, timings: Timings) -> web.Response:
        body = {
            "model": request.model,
            "created_at": rfc3339_now(),
            "response": plan.text,
            **self.final_fields(plan, timings),
        }
        return json_response(200, body)

    def encoder(self, request: GenRequest) -> _GenerateEncoder:
        return _GenerateEncoder(request.model)


class _GenerateEncoder(_ChatEncoder):
    def piece(self, text: str) -> bytes:
        return (
            json_bytes(
                {"model": self._model, "created_at": rfc3339_now(), "response": text, "done": False}
            )
            + b"\n"
        )

    def close(self, plan: Plan, timings: Timings) -> bytes:
        final = {
            "model": self._model,
            "created_at": rfc3339_now(),
            "response": "",
            **_OllamaWire.final_fields(plan, timings),
        }
        return json_bytes(final) + b"\n"


def model_details(model: SimModel) -> dict[str, Any]:
    """Ollama's ModelDetails; vision models carry the ``clip`` projector family."""
    families = [model.family, "clip"] if model.vision else [model.family]
    parameters = model.size_bytes / _Q4_BYTES_PER_PARAMETER
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": families,
        "parameter_size": f"{parameters / 1e9:.1f}B",
        "quantization_level": "Q4_K_M",
    }


def _digest(model: SimModel) -> str:
    return hashlib.sha256(model.name.encode()).hexdigest()


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's `keep_alive`: seconds as a number, or a Go duration ("10m", "1h30m",
    "-1"); None when absent or unreadable. Below zero: kept loaded forever."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    try:
        return sign * float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sign * sum(float(number) * _SECONDS_PER[unit] for number, unit in parts)


class OllamaCatalog:
    """GET /api/version, /api/tags, /api/ps and POST /api/show.

    The model list never changes while the server runs, so bodies are encoded once.
    `/api/ps` follows each model's last `keep_alive` (`kept`): its expiry, forever below
    zero, unloaded at zero; five minutes from now for a model never asked with one.
    """

    def __init__(self, models: dict[str, SimModel], started: datetime) -> None:
        self._models = models
        self._kept: dict[str, datetime] = {}
        self._modified_at = _rfc3339(started)
        self._version = json_bytes({"version": OLLAMA_VERSION})
        self._tags = json_bytes(
            {
                "models": [
                    {
                        "name": model.name,
                        "model": model.name,
                        "modified_at": self._modified_at,
                        "size": model.size_bytes,
                        "digest": _digest(model),
                        "details": model_details(model),
                    }
                    for model in models.values()
                ]
            }
        )

    async def version(self, request: web.Request) -> web.Response:
        return web.Response(body=self._version, headers=JSON_HEADERS)

    async def tags(self, request: web.Request) -> web.Response:
        return web.Response(body=self._tags, headers=JSON_HEADERS)

    def kept(self, payload: dict[str, Any]) -> None:
        """A generation request's `keep_alive`, as Ollama's scheduler takes it."""
        seconds = keep_alive_seconds(payload.get("keep_alive"))
        if seconds is not None and payload.get("model") in self._models:
            now = datetime.now(UTC)
            until = _FOREVER if seconds < 0 else now + timedelta(seconds=seconds)
            self._kept[payload["model"]] = until

    async def ps(self, request: web.Request) -> web.Response:
        now = datetime.now(UTC)
        default = now + _KEEP_ALIVE
        loaded = [
            {
                "name": model.name,
                "model": model.name,
                "size": model.size_bytes,
                "digest": _digest(model),
                "details": model_details(model),
                "expires_at": _rfc3339(self._kept.get(model.name, default)),
                "size_vram": model.size_bytes,
                "context_length": model.context_window,
            }
            for model in self._models.values()
            if model.running and self._kept.get(model.name, default) > now
        ]
        return json_response(200, {"models": loaded})

    async def show(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            return json_response(400, {"error": "invalid JSON body"})
        name = None
        if isinstance(payload, dict):
            name = payload.get("model") or payload.get("name")
        if not isinstance(name, str) or not name:
            return json_response(400, {"error": "model is required"})
        model = self._models.get(name)
        if model is None:
            return json_response(404, {"error": f"model '{name}' not found"})
        return json_response(200, _show_body(model, self._modified_at))


def _show_body(model: SimModel, modified_at: str) -> dict[str, Any]:
    parameters = int(model.size_bytes / _Q4_BYTES_PER_PARAMETER)
    capabilities = show_capabilities(model)
    return {
        "modelfile": f"# Modelfile generated by the inferbus simulator\nFROM {model.name}\n",
        "parameters": f"num_ctx                        {model.context_window}",
        "template": "{{ .Prompt }}",
        "details": model_details(model),
        "model_info": {
            "general.architecture": model.family,
            "general.parameter_count": parameters,
            f"{model.family}.context_length": model.context_window,
        },
        "capabilities": capabilities,
        "modified_at": modified_at,
    }


def add_ollama_routes(app: web.Application, started: datetime) -> None:
    """Register Ollama's endpoints on ``app`` (whose state is already set)."""
    catalog = OllamaCatalog(app[STATE_KEY].models, started)
    chat, generate = OllamaChat(catalog.kept), OllamaGenerate(catalog.kept)

    async def chat_handler(request: web.Request) -> web.StreamResponse:
        return await serve_generation(request, chat)

    async def generate_handler(request: web.Request) -> web.StreamResponse:
        return await serve_generation(request, generate)

    app.router.add_get("/api/version", catalog.version)
    app.router.add_get("/api/tags", catalog.tags)
    app.router.add_get("/api/ps", catalog.ps)
    app.router.add_post("/api/show", catalog.show)
    app.router.add_post("/api/chat", chat_handler)
    app.router.add_post("/api/generate", generate_handler)
