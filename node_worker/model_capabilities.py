"""What each served model can do (`capabilities` in the NCS record), decided once per listing.

In order of trust: the operator's override in the worker config (`[backends.capabilities]`,
per model name or `default`), then what the runtime itself reports (Ollama `/api/show`,
llama.cpp `/props`), then the model's name as a last resort. vLLM's and LM Studio's
`/v1/models` say nothing about tools, so their models get names-based capabilities unless
the operator says otherwise (vLLM serves tools only with `--enable-auto-tool-choice`, which
no API reveals). Names never claim `tools` for a runtime that can report its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from services.runtimes.base import ModelInfo, RuntimeKind

EMBED_HINTS = ("embed", "bge-", "e5-", "minilm", "nomic-embed", "gte-")
VISION_HINTS = ("llava", "vision", "-vl", "vl-", "moondream", "bakllava", "minicpm-v", "pixtral")
# Families whose chat templates carry tools (Ollama's library marks all of them `tools`).
_TOOL_HINTS = (
    "qwen2.5",
    "qwen3",
    "llama3.1",
    "llama3.2",
    "llama3.3",
    "llama4",
    "mistral",
    "mixtral",
    "hermes",
    "command-r",
    "granite3",
    "gpt-4",
    "gpt-5",
    "gpt-oss",
    "firefunction",
)
_THINKING_HINTS = ("qwen3", "deepseek-r1", "gpt-oss", "magistral", "qwq")
# Runtimes that report capabilities themselves: what they leave out, the model lacks.
_SELF_REPORTING: frozenset[RuntimeKind] = frozenset({"ollama"})


def capabilities_from_name(name: str) -> tuple[str, ...]:
    """A guess from the model's name: embedding models embed, the rest complete."""
    lowered = name.lower()
    if any(hint in lowered for hint in EMBED_HINTS):
        return ("embedding",)
    found = ["completion"]
    if any(hint in lowered for hint in _TOOL_HINTS):
        found.append("tools")
    if any(hint in lowered for hint in VISION_HINTS):
        found.append("vision")
    if any(hint in lowered for hint in _THINKING_HINTS):
        found.append("thinking")
    return tuple(found)


def model_capabilities(
    info: ModelInfo, kind: RuntimeKind, overrides: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """The model's capabilities: override, else the runtime's report, else its name."""
    override = overrides.get(info.name, overrides.get("default"))
    if override is not None:
        return tuple(override)
    if info.capabilities:
        return info.capabilities
    if kind in _SELF_REPORTING:
        return ()  # an Ollama that reports none is older than capabilities: unknown
    return capabilities_from_name(info.name)


def with_capabilities(
    models: Sequence[ModelInfo], kind: RuntimeKind, overrides: Mapping[str, Sequence[str]]
) -> list[ModelInfo]:
    """The listing with every model's capabilities decided."""
    return [
        dataclasses.replace(model, capabilities=model_capabilities(model, kind, overrides))
        for model in models
    ]
