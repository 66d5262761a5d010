"""What one job may ask for: the bounds every receiver of a job applies.

The router's HTTP edge and a worker reached straight over NATS parse a job with the same
models (`services.wire`), and these bounds are part of them, so both refuse the same jobs
with the same BAD_REQUEST naming the field. Each bound is far above what a real client
sends and well below what stalls a node or overflows a runtime's integer parsing:

- `input` (embed): at most 2,048 items, OpenAI's own limit per request (200,000
  one-character inputs tied a node up for seconds);
- `params.dimensions`: 1 to 16,384, above every embedding model's width;
- `params.max_tokens` (and `max_completion_tokens`): 1 to 2^31 - 1, the largest every
  runtime reads (llama.cpp's is a 32-bit int);
- `params.stop`: at most 16 strings of at most 256 characters each (runtimes check every
  stop string after every token);
- `messages`: at most 4,096, with at most 8,192 content parts and 8,192 tool calls among
  them; `tools`: at most 128 (OpenAI's limit). Each is a model to validate, and a
  validation holds the event loop (and the GIL) from start to end: 200,000 messages took
  2.3 s; within these bounds the worst takes ~0.1 s;
- the whole job: at most 100,000 JSON objects and arrays, wherever they are (`extra`, a
  JSON schema): each becomes a Python object to build, validate and encode again, and 2.4 MB
  of nested empty arrays took 0.6 s to parse at once. A job's JSON past 64 KB is parsed in
  pieces off the event loop (services/big_json.py), and given up at the bound.

An embed job's answer has to fit the bus: `embeddings_wire_bytes_at_least` is the least
space its vectors take on the wire, so a job whose answer cannot fit is refused before
any runtime is called (PAYLOAD_TOO_LARGE).
"""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

from services.errors import ErrorCode, InferbusError

__all__ = [
    "MAX_CONTENT_PARTS",
    "MAX_DIMENSIONS",
    "MAX_EMBED_INPUTS",
    "MAX_JSON_CONTAINERS",
    "MAX_MESSAGES",
    "MAX_STOP_CHARS",
    "MAX_STOP_SEQUENCES",
    "MAX_TOKENS",
    "MAX_TOOLS",
    "MAX_TOOL_CALLS",
    "check_embed_inputs",
    "check_messages",
    "check_stop",
    "check_tools",
    "embeddings_over_bus",
    "embeddings_wire_bytes_at_least",
]

MAX_EMBED_INPUTS = 2048
MAX_DIMENSIONS = 16_384
MAX_TOKENS = 2**31 - 1
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 8192
MAX_TOOL_CALLS = 8192
MAX_TOOLS = 128
MAX_JSON_CONTAINERS = 100_000

# The shortest a float can be on the wire ("0.0") plus the comma after it.
_MIN_FLOAT_BYTES = 4


def check_embed_inputs(value: Any) -> Any:
    """`input` before item validation: a list over the bound is refused without looking
    at its items (a 200,000-item list costs nothing to refuse)."""
    if isinstance(value, list) and len(value) > MAX_EMBED_INPUTS:
        raise PydanticCustomError(
            "too_many_inputs",
            "at most {limit} inputs per request, got {count}",
            {"limit": MAX_EMBED_INPUTS, "count": len(value)},
        )
    return value


def check_messages(value: Any) -> Any:
    """`messages` before item validation: how many, and their content parts and tool calls
    in all (each one a model to validate)."""
    if not isinstance(value, list):
        return value
    _at_most("messages", len(value), MAX_MESSAGES)
    items = [message for message in value if isinstance(message, dict)]
    parts = sum(_length(message.get("content")) for message in items)
    _at_most("content parts", parts, MAX_CONTENT_PARTS)
    calls = sum(_length(message.get("tool_calls")) for message in items)
    _at_most("tool calls", calls, MAX_TOOL_CALLS)
    return value


def check_tools(value: Any) -> Any:
    """`tools` before item validation: at most MAX_TOOLS."""
    _at_most("tools", _length(value), MAX_TOOLS)
    return value


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _at_most(field: str, count: int, limit: int) -> None:
    if count > limit:
        raise PydanticCustomError(
            "too_many_items",
            "at most {limit} {field} per request, got {count}",
            {"field": field, "limit": limit, "count": count},
        )


def check_stop(value: Any) -> Any:
    """`stop` before item validation: a string or a list, each within the bounds."""
    stops = value if isinstance(value, list) else [value] if isinstance(value, str) else []
    if len(stops) > MAX_STOP_SEQUENCES:
        raise PydanticCustomError(
            "too_many_stops",
            "at most {limit} stop strings, got {count}",
            {"limit": MAX_STOP_SEQUENCES, "count": len(stops)},
        )
    for stop in stops:
        if isinstance(stop, str) and len(stop) > MAX_STOP_CHARS:
            raise PydanticCustomError(
                "stop_too_long",
                "a stop string may have at most {limit} characters, got {count}",
                {"limit": MAX_STOP_CHARS, "count": len(stop)},
            )
    return value


def embeddings_wire_bytes_at_least(vectors: int, dimensions: int) -> int:
    """The least space `vectors` vectors of `dimensions` numbers take in a JSON answer:
    every number at least "0.0" and a separator, every vector its brackets."""
    return vectors * (dimensions * _MIN_FLOAT_BYTES + 1)


def embeddings_over_bus(vector_lengths: list[int], bus_limit: int) -> InferbusError | None:
    """PAYLOAD_TOO_LARGE when vectors of these lengths cannot fit in a message of
    `bus_limit` bytes, whatever their numbers are; None when they might."""
    least = sum(embeddings_wire_bytes_at_least(1, length) for length in vector_lengths)
    if least <= bus_limit:
        return None
    return InferbusError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"{len(vector_lengths)} embeddings of {max(vector_lengths)} numbers take at least "
        f"{least} bytes, over the bus limit of {bus_limit}; send fewer inputs or ask for "
        "fewer dimensions",
    )
