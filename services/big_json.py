"""Big JSON without a stalled event loop: decode and encode in bounded pieces, off the loop.

A process answers its liveness probes (`node.<id>.caps`) on the same event loop that
handles its jobs, so no single step of a job may hold that loop for long. Two steps grow
with the job: reading a runtime's answer (an embedding of 2,048 inputs of 4,096 numbers each is
~100 MB of JSON) and writing ours. Moving one big `json.loads` to a thread does not help:
it is one C call that holds the GIL from start to end. So big bodies are worked through in
pieces — one flat array (a vector) or one key at a time — in a worker thread, and between
two pieces the interpreter hands the GIL back to the loop (every `sys.getswitchinterval()`,
5 ms).

    await loads(data)                     a runtime's JSON answer, off the loop when big
    await loads_request(data)             a job's JSON, off the loop, containers bounded
    await decode_job(data, default_type)  a job from the bus, or BAD_REQUEST
    await encode_answer(response, limit)  our answer as bytes; None when over `limit`
    embedding_numbers(response)           how many numbers an answer's vectors hold
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import secrets
from typing import Any

import pydantic_core

from services.bounds import MAX_JSON_CONTAINERS
from services.wire import JobRequest, JobResponse, JobType, encode, not_json, request_of

__all__ = [
    "BIG_ANSWER_NUMBERS",
    "BIG_BODY_BYTES",
    "TooManyContainers",
    "decode_job",
    "embedding_numbers",
    "encode_answer",
    "encode_within",
    "loads",
    "loads_in_pieces",
    "loads_request",
]

# Below these, one call takes a few milliseconds: done on the loop, in one piece.
BIG_BODY_BYTES = 1 << 20
BIG_ANSWER_NUMBERS = 1 << 16
_TEXT_PIECE_BYTES = 1 << 20
# A job's JSON above this is parsed in pieces (a pathological 64 KB takes ~15 ms at once).
_SMALL_REQUEST_BYTES = 1 << 16

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SCALARS = json.JSONDecoder()


async def loads(data: bytes, *, max_containers: int | None = None) -> Any:
    """`json.loads(data)`; a big body is parsed in pieces in a thread. Raises ValueError
    (`TooManyContainers` past `max_containers` objects and arrays in a big body)."""
    if len(data) < BIG_BODY_BYTES:
        return json.loads(data)
    return await asyncio.to_thread(loads_in_pieces, data, max_containers=max_containers)


async def loads_request(data: bytes) -> Any:
    """A job's JSON: past a few kilobytes in pieces off the loop, and at most
    MAX_JSON_CONTAINERS objects and arrays (each becomes a Python object to build,
    validate and encode again: 2.4 MB of nested empty arrays took 0.6 s in one
    `json.loads`). Raises ValueError or RecursionError."""
    if len(data) < _SMALL_REQUEST_BYTES:
        return json.loads(data)
    return await asyncio.to_thread(loads_in_pieces, data, max_containers=MAX_JSON_CONTAINERS)


async def decode_job(data: bytes, *, default_type: JobType) -> JobRequest | JobResponse:
    """`services.wire.decode_request`, with the JSON parsed by `loads_request`."""
    try:
        parsed = await loads_request(data)
    except (ValueError, RecursionError) as exc:
        return not_json(exc)
    return request_of(parsed, default_type=default_type)


class TooManyContainers(json.JSONDecodeError):
    """More objects and arrays than a body may hold."""


def loads_in_pieces(data: bytes, *, max_containers: int | None = None) -> Any:
    """What `json.loads(data)` returns, parsed one flat array or one key at a time.

    Containers are walked here; a scalar or an array of scalars (a vector) is one
    `raw_decode` call. Raises ValueError (json.JSONDecodeError) on malformed JSON,
    `TooManyContainers` as soon as more than `max_containers` objects and arrays are seen.
    """
    parser = _Pieces(_text_in_pieces(data), max_containers)
    value, end = parser.value(parser.skip(0))
    if parser.skip(end) != len(parser.text):
        raise json.JSONDecodeError("extra data", parser.text, end)
    return value


def _text_in_pieces(data: bytes) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts = [
        decoder.decode(data[at : at + _TEXT_PIECE_BYTES])
        for at in range(0, len(data), _TEXT_PIECE_BYTES)
    ]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


class _Pieces:
    def __init__(self, text: str, max_containers: int | None) -> None:
        self.text = text
        self._max = max_containers
        self._left = max_containers

    def skip(self, at: int) -> int:
        match = _WHITESPACE.match(self.text, at)
        return match.end() if match else at

    def _count(self, at: int) -> None:
        if self._left is None:
            return
        self._left -= 1
        if self._left < 0:
            raise TooManyContainers(f"more than {self._max} objects and arrays", self.text, at)

    def value(self, at: int) -> tuple[Any, int]:
        text = self.text
        head = text[at : at + 1]
        if head == "{":
            return self._object(at)
        if head == "[":
            self._count(at)
            first = self.skip(at + 1)
            if text[first : first + 1] in ("[", "{"):
                return self._array(first)
        return _SCALARS.raw_decode(text, at)

    def _array(self, at: int) -> tuple[list[Any], int]:
        """Items from `at` (just past the opening bracket and its whitespace) to the `]`."""
        items: list[Any] = []
        while True:
            item, at = self.value(at)
            items.append(item)
            at = self.skip(at)
            separator = self.text[at : at + 1]
            if separator == "]":
                return items, at + 1
            if separator != ",":
                raise json.JSONDecodeError("expected ',' or ']'", self.text, at)
            at = self.skip(at + 1)

    def _object(self, at: int) -> tuple[dict[str, Any], int]:
        self._count(at)
        text = self.text
        found: dict[str, Any] = {}
        at = self.skip(at + 1)
        if text[at : at + 1] == "}":
            return found, at + 1
        while True:
            if text[at : at + 1] != '"':
                raise json.JSONDecodeError("expected a key", text, at)
            key, at = _SCALARS.raw_decode(text, at)
            at = self.skip(at)
            if text[at : at + 1] != ":":
                raise json.JSONDecodeError("expected ':'", text, at)
            found[key], at = self.value(self.skip(at + 1))
            at = self.skip(at)
            separator = text[at : at + 1]
            if separator == "}":
                return found, at + 1
            if separator != ",":
                raise json.JSONDecodeError("expected ',' or '}'", text, at)
            at = self.skip(at + 1)


def embedding_numbers(response: JobResponse) -> int:
    """How many numbers the answer's embedding vectors hold (0 for other answers)."""
    vectors = response.result.embeddings if response.result is not None else None
    return sum(len(vector) for vector in vectors) if vectors else 0


async def encode_answer(response: JobResponse, limit: int) -> bytes | None:
    """`encode(response)`, or None when it would be over `limit` bytes. An answer with many
    embedding numbers is encoded in a thread, one vector at a time, and given up as soon as
    it passes `limit` (an answer that cannot fit the bus costs at most `limit` bytes of work)."""
    if embedding_numbers(response) < BIG_ANSWER_NUMBERS:
        payload = encode(response)
        return payload if len(payload) <= limit else None
    return await asyncio.to_thread(encode_within, response, limit)


def encode_within(response: JobResponse, limit: int) -> bytes | None:
    """The answer's JSON (as `encode` writes it), vector by vector; None past `limit`."""
    result = response.result
    vectors = result.embeddings if result is not None else None
    if result is None or not vectors:
        payload = encode(response)
        return payload if len(payload) <= limit else None
    # The answer without its vectors, with a marker no text can hold where they go.
    marker = f"\x00{secrets.token_hex(16)}\x00"
    shell = response.model_dump(mode="json", exclude_none=True, exclude={"result": {"embeddings"}})
    shell["result"]["embeddings"] = marker
    head, found, tail = pydantic_core.to_json(shell).partition(pydantic_core.to_json(marker))
    if not found:
        raise AssertionError("the embeddings marker is missing from the encoded answer")
    pieces = [head, b"["]
    size = len(head) + len(tail) + 2
    for at, vector in enumerate(vectors):
        piece = pydantic_core.to_json(vector)
        size += len(piece) + (1 if at else 0)
        if size > limit:
            return None
        if at:
            pieces.append(b",")
        pieces.append(piece)
    pieces += [b"]", tail]
    return b"".join(pieces)
