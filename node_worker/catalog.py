"""What this node serves: model name → the runtime that serves it, and the model's type.

Pure: built from what the runtimes listed. When one model is served by several runtimes
on the node, the best runtime by priority wins (vllm > llamacpp > lmstudio > ollama >
openai-compatible remote), ties broken by configuration order, so the choice is stable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from node_worker.model_capabilities import EMBED_HINTS, VISION_HINTS
from services.capabilities import ModelType, Pricing
from services.errors import ErrorCode, InferbusError
from services.runtimes.base import ModelInfo, Runtime, RuntimeKind
from services.wire import JOB_TYPES, JobType

RUNTIME_PRIORITY: dict[RuntimeKind, int] = {
    "vllm": 0,
    "llamacpp": 1,
    "lmstudio": 2,
    "ollama": 3,
    "openai": 4,
}

_CODE_HINTS = ("coder", "code", "starcoder", "codestral", "deepseek-coder")


def classify_model(info: ModelInfo) -> ModelType:
    """The model's type: the runtime's own capabilities first, the name only otherwise."""
    capabilities = set(info.capabilities)
    if "vision" in capabilities:
        return "vision"
    if "embedding" in capabilities and "completion" not in capabilities:
        return "embed"
    name = info.name.lower()
    if any(hint in name for hint in EMBED_HINTS):
        return "embed"
    if not capabilities and any(hint in name for hint in VISION_HINTS):
        return "vision"
    if any(hint in name for hint in _CODE_HINTS):
        return "code"
    return "llm"


@dataclass(frozen=True)
class CatalogModel:
    name: str
    type: ModelType
    runtime: Runtime
    info: ModelInfo
    pricing: Pricing | None = None

    @property
    def runtime_id(self) -> str:
        """The name to send the runtime (llama.cpp: its own id, the path, when it was one)."""
        return self.info.runtime_id or self.name

    def answers_as(self, model: str) -> bool:
        """Whether a runtime answer naming `model` is this model."""
        return model in (self.name, self.runtime_id, *self.info.aliases)


@dataclass(frozen=True)
class RuntimeListing:
    """One runtime's answer to discovery, after the configured allow-list."""

    runtime: Runtime
    models: Sequence[ModelInfo]
    price_of: Callable[[str], Pricing | None] = lambda _model: None


def _wanted_types(job_type: JobType) -> tuple[ModelType, ...]:
    """Model types that can take a job type, best first (code and llm stand in)."""
    if job_type == "vision":
        return ("vision",)
    if job_type == "embed":
        return ("embed",)
    if job_type == "code":
        return ("code", "llm")
    return ("llm", "code")


class Catalog:
    def __init__(self, listings: Iterable[RuntimeListing]) -> None:
        ranked = sorted(
            enumerate(listings), key=lambda it: (RUNTIME_PRIORITY[it[1].runtime.kind], it[0])
        )
        self.models: dict[str, CatalogModel] = {}
        for _, listing in ranked:
            for info in listing.models:
                if info.name not in self.models:
                    self.models[info.name] = CatalogModel(
                        info.name,
                        classify_model(info),
                        listing.runtime,
                        info,
                        listing.price_of(info.name),
                    )
        # Other names a job may use: llama.cpp's GGUF path for its readable name.
        self.aliases: dict[str, str] = {
            alias: served.name
            for served in self.models.values()
            for alias in served.info.aliases
            if alias not in self.models
        }
        self.runtime_count = len(ranked)
        # Decided once per discovery, not per job: the default model for each job type.
        self.defaults: dict[JobType, CatalogModel | None] = {
            job_type: self._best_for(job_type) for job_type in JOB_TYPES
        }

    def _best_for(self, job_type: JobType) -> CatalogModel | None:
        """Running before installed, then by name; code and llm stand in for each other."""
        for wanted in _wanted_types(job_type):
            candidates = [m for m in self.models.values() if m.type == wanted]
            if candidates:
                return min(candidates, key=lambda m: (m.info.running is not True, m.name))
        return None

    def resolve(self, model: str | None, job_type: JobType) -> CatalogModel:
        """The model a job runs on: the one it names, else this node's default for its type."""
        if model is not None:
            model = self.aliases.get(model, model)
        served = self.models.get(model) if model is not None else self.defaults[job_type]
        if served is not None:
            return served
        if model is not None:
            raise self._missing(f"model {model!r} is not served on this node")
        raise self._missing(f"no {job_type} model is served on this node")

    def _missing(self, message: str) -> InferbusError:
        if self.runtime_count == 0:
            return InferbusError(
                ErrorCode.BACKEND_UNAVAILABLE, "no runtime on this node is reachable"
            )
        return InferbusError(ErrorCode.MODEL_NOT_FOUND, message)
