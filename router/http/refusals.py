"""Reading an agent dialect's body: a field refused by name, and the checks the
Anthropic and Responses bodies share (a text part's `text`, a JSON schema the job
carries)."""

from __future__ import annotations

from typing import Any

from services.wire_features import MAX_JSON_DEPTH, json_depth_exceeds

__all__ = ["Refused", "bad", "schema_of", "text_of"]


class Refused(Exception):
    """A field the dialect's API or this router cannot take; `str` names it."""


def bad(field: str, reason: str) -> Refused:
    return Refused(f"{field}: {reason}")


def text_of(part: dict[str, Any], where: str) -> str:
    """A text part's `text`: a string (absent: empty), never another JSON value."""
    text = part.get("text", "")
    if not isinstance(text, str):
        raise bad(f"{where}.text", "a string")
    return text


def schema_of(schema: Any, where: str) -> dict[str, Any]:
    """A JSON schema the job carries: an object, not nested past what the wire takes."""
    if not isinstance(schema, dict):
        raise bad(where, "required: a JSON schema object")
    if json_depth_exceeds(schema, MAX_JSON_DEPTH):
        raise bad(where, f"nested deeper than {MAX_JSON_DEPTH} levels")
    return schema
