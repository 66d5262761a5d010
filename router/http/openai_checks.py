"""What OpenAI's Chat Completions API refuses in a conversation, refused the same way.

A runtime would take these and answer something, but OpenAI answers 400 with the `param`
at fault, and a client written against OpenAI relies on that (an agent loop that sends a
tool result for a call nobody made has a bug it must hear about):
- a role OpenAI does not know (`"usr"`, `"wizard"`);
- a `tool` message without `tool_call_id`;
- a `tool` message answering a call id no earlier assistant message made.

Pure: the raw body in, the first refusal (or None) out. `param` spells the field the way
OpenAI does (`messages[2].tool_call_id`).
"""

from __future__ import annotations

from typing import Any

from services.errors import ErrorCode, InferbusError

OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _refusal(param: str, reason: str) -> InferbusError:
    return InferbusError(ErrorCode.BAD_REQUEST, f"{param}: {reason}")


def _call_ids(message: dict[str, Any]) -> set[str]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return set()
    return {
        call["id"] for call in calls if isinstance(call, dict) and isinstance(call.get("id"), str)
    }


def conversation_refusal(raw: dict[str, Any]) -> InferbusError | None:
    """The first thing in `messages` that OpenAI would refuse, or None."""
    messages = raw.get("messages")
    if not isinstance(messages, list):
        return None  # the job's own validation names what is wrong with it
    made: set[str] = set()
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role", "user")
        if role not in OPENAI_ROLES:
            return _refusal(
                f"messages[{position}].role",
                f"invalid value {role!r}; supported values are {', '.join(OPENAI_ROLES)}",
            )
        if role == "assistant":
            made |= _call_ids(message)
        if role != "tool":
            continue
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            return _refusal(f"messages[{position}].tool_call_id", "required for role 'tool'")
        if call_id not in made:
            return _refusal(
                f"messages[{position}].tool_call_id",
                f"{call_id!r} answers no tool call of an earlier assistant message "
                "(a 'tool' message must respond to a preceding message with 'tool_calls')",
            )
    return None


def chat_fields(raw: dict[str, Any]) -> dict[str, Any] | InferbusError:
    """The chat body as job fields, unless OpenAI would refuse its conversation."""
    return conversation_refusal(raw) or raw
