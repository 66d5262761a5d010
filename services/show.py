"""`node.<id>.show`: a served model's details, from the runtime that serves it.

The router's Ollama `POST /api/show` asks one node that serves the model; the worker asks
its runtime and answers Ollama's ShowResponse (`details`, `model_info`, `capabilities`,
`modified_at`, and for Ollama runtimes also `modelfile`, `parameters`, `template`...).
An Ollama runtime answers its own `/api/show`; for OpenAI-compatible runtimes
(llama.cpp, vLLM...) the worker writes the same shape from what discovery learned
(`show_from_info`).

    request  {"model": "qwen3:8b", "verbose": false}
    reply    {"model": "qwen3:8b", "show": {...Ollama's ShowResponse...}}
          or {"model": "qwen3:8b", "error": {"code": "MODEL_NOT_FOUND", "message": "..."}}

Like every job subject, a request the worker cannot read gets a BAD_REQUEST reply.
Workers that answer it list `show` in their record's `wire_features`.
"""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from services.errors import ErrorCode, InferbusError
from services.runtimes.base import ModelInfo
from services.wire import ErrorInfo

__all__ = [
    "ShowReply",
    "ShowRequest",
    "decode_show_reply",
    "decode_show_request",
    "show_from_info",
]


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=512)
    verbose: bool = False


class ShowReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    show: dict[str, Any] | None = None
    error: ErrorInfo | None = None

    @classmethod
    def failure(cls, model: str, error: InferbusError) -> ShowReply:
        return cls(model=model, error=ErrorInfo.of(error))


def decode_show_request(data: bytes) -> ShowRequest | InferbusError:
    try:
        return ShowRequest.model_validate_json(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return InferbusError(ErrorCode.BAD_REQUEST, f"{where}: {first['msg']}")


def decode_show_reply(data: bytes) -> ShowReply | InferbusError:
    """A reply, or INTERNAL for bytes that are not one (a node's fault)."""
    try:
        reply = ShowReply.model_validate_json(data)
    except pydantic.ValidationError:
        return InferbusError(ErrorCode.INTERNAL, "unreadable show reply")
    if reply.show is None and reply.error is None:
        return InferbusError(ErrorCode.INTERNAL, "a show reply with neither show nor error")
    return reply


_CAPABILITIES_OF_TYPE = {
    "embed": ["embedding"],
    "vision": ["completion", "vision"],
    "llm": ["completion"],
    "code": ["completion"],
}


def show_from_info(info: ModelInfo, runtime_kind: str, model_type: str) -> dict[str, Any]:
    """Ollama's ShowResponse for a model of a runtime that has no `/api/show`, from what
    discovery learned; `model_info` follows GGUF's key names, as Ollama's does. Without
    capabilities from the runtime, those of the model's type."""
    family = info.family or ""
    model_info: dict[str, Any] = {"general.architecture": family} if family else {}
    if info.context_window:
        model_info[f"{family or 'general'}.context_length"] = info.context_window
    show: dict[str, Any] = {
        "details": {
            "parent_model": "",
            "format": info.format or ("gguf" if runtime_kind == "llamacpp" else ""),
            "family": family,
            "families": [family] if family else None,
            "parameter_size": info.parameter_size or "",
            "quantization_level": info.quantization_level or "",
        },
        "model_info": model_info,
        "capabilities": list(info.capabilities) or _CAPABILITIES_OF_TYPE.get(model_type, []),
    }
    if info.modified_at:
        show["modified_at"] = info.modified_at
    return show
