"""OpenAI's Embeddings dialect: `POST /v1/embeddings` as an `embed` job.

`input` is a string or a list of strings (token-id arrays are refused by name: no local
runtime takes them); `dimensions` goes to the runtime; `encoding_format: base64` answers
each vector as little-endian float32 bytes in base64, which is what the official client
asks for by default and decodes itself.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import Asked
from router.http.openai import OpenAIDialect
from services.errors import ErrorCode, InferbusError
from services.wire import JobRequest, JobResponse

ENCODINGS = ("float", "base64")


def embed_fields(raw: dict[str, Any]) -> dict[str, Any] | InferbusError:
    """The body as an embed job's fields, or BAD_REQUEST naming what cannot be embedded."""
    encoding = raw.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        return InferbusError(
            ErrorCode.BAD_REQUEST, f"encoding_format: must be one of {list(ENCODINGS)}"
        )
    given = raw.get("input")
    texts = given if isinstance(given, list) else [given]
    if not texts or not all(isinstance(text, str) for text in texts):
        return InferbusError(
            ErrorCode.BAD_REQUEST,
            "input: a string or a non-empty list of strings (token ids are not supported)",
        )
    return {**raw, "type": "embed", "input": given}


def encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_body(response: JobResponse, job: JobRequest, raw: dict[str, Any]) -> dict[str, Any]:
    encoding = str(raw.get("encoding_format", "float"))
    result = response.result
    vectors = (result.embeddings if result else None) or []
    prompt_tokens = result.usage.prompt_tokens if result else 0
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": at, "embedding": encoded(vector, encoding)}
            for at, vector in enumerate(vectors)
        ],
        "model": response.model or job.model or "",
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


class Embeddings(OpenAIDialect):
    """Embeddings are answered whole, also when a body asks for a stream."""

    name = "embeddings"
    path = "/v1/embeddings"

    def shape(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        return embed_fields(body)

    def answer(self, response: JobResponse, route: Route, asked: Asked) -> Response:
        return JSONResponse(embeddings_body(response, asked.job, asked.body))
