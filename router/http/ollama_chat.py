"""Ollama's generation dialects: `POST /api/chat` and `POST /api/generate`, NDJSON
streams by default (one object with `stream: false`), on the dialect template.

Bodies become jobs in router/http/ollama_requests.py, answers take Ollama's shapes in
router/http/ollama_answers.py. A chat or generate with no input is Ollama's way to load
(or, with `keep_alive: 0`, unload) a model: across the fleet it is a one-token job on a
node that serves the model (which loads it there; `keep_alive` goes with it), answered as
Ollama answers a load (`done_reason: load`/`unload`, one object, no text).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import Asked
from router.http.ollama import OllamaDialect
from router.http.ollama_answers import OllamaLines, chat_answer, generate_answer, load_answer
from router.http.ollama_requests import chat_fields, generate_fields, is_load_request, load_fields
from router.http.streams import StreamFormat
from services.errors import InferbusError
from services.wire import JobResponse

__all__ = ["OllamaChat", "OllamaGenerate"]

_UNLOAD = (0, "0", "0s", "0m")


class _Generation(OllamaDialect):
    endpoint = ""  # "chat" or "generate": which of Ollama's shapes

    def _fields(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        raise NotImplementedError

    def _whole(self, response: JobResponse, route: Route, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def shape(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        if is_load_request(self.endpoint, body):
            return load_fields(body)
        return self._fields(body)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        model = asked.job.model or ""
        if is_load_request(self.endpoint, asked.body):
            unload = asked.body.get("keep_alive") in _UNLOAD
            loaded = load_answer(self.endpoint, model, unload=unload, now_unix=time.time())
            return JSONResponse(loaded)
        return JSONResponse(self._whole(response, route, model))

    def stream(self, asked: Asked) -> StreamFormat | None:
        if is_load_request(self.endpoint, asked.body):
            return None  # a load is answered with one object
        return OllamaLines(self.endpoint, asked.job.model or "", time.time)


class OllamaChat(_Generation):
    """`/api/chat`: messages (images, tool calls, tool results) in, a message out."""

    name = "ollama_chat"
    path = "/api/chat"
    endpoint = "chat"

    def _fields(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        return chat_fields(body)

    def _whole(self, response: JobResponse, route: Route, model: str) -> dict[str, Any]:
        return chat_answer(response, route, model, time.time())


class OllamaGenerate(_Generation):
    """`/api/generate`: a prompt (with `system`, `images`, `raw`, `suffix`) in, text out."""

    name = "ollama_generate"
    path = "/api/generate"
    endpoint = "generate"

    def _fields(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        return generate_fields(body)

    def _whole(self, response: JobResponse, route: Route, model: str) -> dict[str, Any]:
        return generate_answer(response, route, model, time.time())
