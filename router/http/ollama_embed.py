"""Ollama's embedding dialects: `POST /api/embed` (one vector per input, `dimensions`) and
the older `POST /api/embeddings` (one prompt, one vector), always answered whole."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import Asked
from router.http.ollama import OllamaDialect
from router.http.ollama_answers import embed_answer, embeddings_answer
from router.http.ollama_requests import embed_fields, embeddings_fields
from router.http.streams import StreamFormat
from services.errors import InferbusError
from services.wire import JobResponse

__all__ = ["OllamaEmbed", "OllamaEmbeddings"]


class _Embedding(OllamaDialect):
    def stream(self, asked: Asked) -> StreamFormat | None:
        return None


class OllamaEmbed(_Embedding):
    name = "ollama_embed"
    path = "/api/embed"

    def shape(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        return embed_fields(body)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        return JSONResponse(embed_answer(response, asked.job.model or ""))


class OllamaEmbeddings(_Embedding):
    name = "ollama_embeddings"
    path = "/api/embeddings"

    def shape(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        return embeddings_fields(body)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        return JSONResponse(embeddings_answer(response))
