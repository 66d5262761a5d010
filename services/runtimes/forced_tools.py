"""A forced tool call on a runtime that cannot be told to call one: constrained output.

OpenAI's `tool_choice: "required"` or `{"type": "function", ...}` (Anthropic's `any` and
`tool`) promise a tool call. Ollama has no `tool_choice`, but it can constrain its output
to a JSON schema (`format`), and a JSON value that matches the function's parameters *is*
the call's arguments. So the call is sent with the tools still offered (the model reads
their descriptions) and `format` set to `ForcedCall.schema()`:
- a named function: its `parameters` schema; the answer's JSON is the arguments;
- `required` with one tool: the same; with several: `{"name": <one of them>,
  "arguments": <its parameters>}` as an `anyOf` over the tools, so the name picks the
  schema its arguments match.
The answer comes back as that tool call (a stable id, `finish_reason: tool_calls`), as if
the runtime had made it. A model that calls a tool by itself anyway is taken at its word.

Pure: what to ask for, and how to read the answer (whole, or a stream of events).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from services.errors import ErrorCode, InferbusError
from services.runtimes.base import ChatCall, ChatReply, StreamDelta, StreamEnd, StreamEvent
from services.wire_features import (
    FunctionCall,
    Tool,
    ToolCall,
    ToolCallDelta,
    canonical_arguments,
    stable_call_id,
)

ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class ForcedCall:
    """What a forced call constrains the output to: one named tool, or a choice of tools."""

    tools: tuple[Tool, ...]

    @property
    def named(self) -> bool:
        return len(self.tools) == 1

    def schema(self) -> dict[str, Any]:
        """The JSON schema the answer must match."""
        if self.named:
            return _parameters(self.tools[0])
        return {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": tool.function.name},
                        "arguments": _parameters(tool),
                    },
                    "required": ["name", "arguments"],
                }
                for tool in self.tools
            ]
        }

    def call_of(self, text: str, finish_reason: str | None) -> ToolCall:
        """The answer's text as the forced call; BAD_REQUEST when `max_tokens` cut it off,
        BACKEND_ERROR when the runtime ignored the schema."""
        names = ", ".join(tool.function.name for tool in self.tools)
        try:
            value = json.loads(text)
        except ValueError:
            if finish_reason == "length":
                raise InferbusError(
                    ErrorCode.BAD_REQUEST,
                    f"params.max_tokens: the forced call to {names} was cut off; raise it",
                ) from None
            raise _ignored(names) from None
        name: Any
        arguments: Any
        if self.named:
            name, arguments = self.tools[0].function.name, value
        elif isinstance(value, dict):
            name, arguments = value.get("name"), value.get("arguments")
        else:
            raise _ignored(names)
        if not isinstance(arguments, dict) or name not in self._names():
            raise _ignored(names)
        text_arguments = canonical_arguments(arguments)
        call_id = stable_call_id(0, str(name), text_arguments)
        return ToolCall(id=call_id, function=FunctionCall(name=str(name), arguments=text_arguments))

    def _names(self) -> set[str]:
        return {tool.function.name for tool in self.tools}


def _parameters(tool: Tool) -> dict[str, Any]:
    return tool.function.parameters or ANY_OBJECT


def _ignored(names: str) -> InferbusError:
    return InferbusError(
        ErrorCode.BACKEND_ERROR,
        f"unreadable runtime response: the forced call to {names} is not JSON matching its "
        "parameters",
    )


def forced_call(call: ChatCall) -> ForcedCall | None:
    """The tool call `call` forces (`tool_choice` required or a named function), if any."""
    choice = call.tool_choice
    if not call.tools or choice is None or choice in ("auto", "none"):
        return None
    if isinstance(choice, str):  # "required": any of the tools
        return ForcedCall(tuple(call.tools))
    chosen = [tool for tool in call.tools if tool.function.name == choice.function.name]
    if not chosen:
        raise InferbusError(
            ErrorCode.BAD_REQUEST, f"tool_choice: function {choice.function.name!r} is not in tools"
        )
    return ForcedCall((chosen[0],))


def as_forced_reply(reply: ChatReply, forced: ForcedCall) -> ChatReply:
    """The constrained answer as the forced call (or the calls the model made itself)."""
    if reply.tool_calls:
        return dataclasses.replace(reply, finish_reason="tool_calls")
    call = forced.call_of(reply.text, reply.finish_reason)
    return dataclasses.replace(reply, text="", tool_calls=[call], finish_reason="tool_calls")


async def as_forced_stream(
    events: AsyncIterator[StreamEvent], forced: ForcedCall
) -> AsyncIterator[StreamEvent]:
    """A constrained stream as the forced call: its JSON text is held back and sent as one
    whole call before the end (calls the model streamed itself pass as they are)."""
    texts: list[str] = []
    called = False
    async for event in events:
        if isinstance(event, StreamEnd):
            if not called:
                call = forced.call_of("".join(texts), event.finish_reason)
                yield StreamDelta("", tool_calls=[ToolCallDelta.whole(0, call)])
            yield dataclasses.replace(event, finish_reason="tool_calls")
            return
        if event.thinking:  # the model's reasoning before the call passes as it is
            yield StreamDelta("", thinking=event.thinking)
        if event.tool_calls:
            called = True
            yield StreamDelta("", tool_calls=event.tool_calls)
        texts.append(event.text)
