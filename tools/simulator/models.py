"""The simulated models and the deterministic text they "generate".

Tests, benchmarks and demos assert on exact generated text across processes and wire
formats, so generation is a pure function of (model, prompt text, token index): the same
request gives the same words on every run, in Ollama and OpenAI format alike, and a capped
answer is a prefix of the uncapped one.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

# Plain lowercase words keep generated text easy to read in logs and safe in any JSON.
_WORDS = (
    "amber anchor apple arrow aspen atlas autumn badge bamboo beacon birch blossom "
    "breeze bridge cactus candle canyon cedar cherry cinder cloud clover comet coral "
    "cotton crystal delta desert dune ember falcon feather fern fjord forest galaxy "
    "garden glacier granite harbor hazel horizon island ivory jasmine juniper kettle "
    "lagoon lantern lemon lotus maple meadow meteor mist nectar oasis ocean olive orbit "
    "orchid pebble pepper pine planet prairie quartz quill raven reef river saffron sage "
    "shadow silver spruce summit thunder tide timber topaz tulip tundra valley velvet "
    "violet walnut willow zephyr"
)
_VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())


@dataclass(frozen=True, slots=True)
class SimModel:
    """A model the simulator serves, described the way runtimes report models.

    Args:
        name: the model name clients send, e.g. ``"llama3:8b"``.
        family: the architecture family reported by ``/api/tags`` and ``/api/show``.
        size_bytes: on-disk size reported by ``/api/tags`` and ``/api/ps``.
        vision: whether requests with images are accepted.
        context_window: prompt words above this are rejected as context exceeded.
        running: whether ``/api/ps`` lists the model as loaded.
        tools: whether requests with ``tools`` are accepted (else 400, as from a runtime
            whose model or chat template has no tool support).
        embedding: whether ``/api/embed`` and ``/v1/embeddings`` answer for it.
        chat: whether it generates at all (an embedding-only model does not).
        embedding_dimensions: how many numbers its vectors have when a request names no
            `dimensions` (the model's own width).
        thinking: whether it reasons before answering when a request asks it to (Ollama
            `think`, the chat template's `enable_thinking`).
    """

    name: str
    family: str = "llama"
    size_bytes: int = 4_000_000_000
    vision: bool = False
    context_window: int = 8192
    running: bool = True
    tools: bool = True
    embedding: bool = False
    chat: bool = True
    embedding_dimensions: int = 16
    thinking: bool = False

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"SimModel.name must be a non-empty name, got {self.name!r}")
        if self.size_bytes < 0:
            raise ValueError(f"SimModel.size_bytes must be >= 0, got {self.size_bytes}")
        if self.embedding_dimensions < 1:
            raise ValueError(
                f"SimModel.embedding_dimensions must be >= 1, got {self.embedding_dimensions}"
            )
        if self.context_window < 1:
            raise ValueError(f"SimModel.context_window must be >= 1, got {self.context_window}")


# What `python -m tools.simulator` serves when no models are given: one of each type
# the router selects between (llm, code, vision), and one embedding model.
DEFAULT_MODELS: tuple[SimModel, ...] = (
    SimModel("llama3.2:3b", family="llama", size_bytes=2_019_393_189, context_window=8192),
    SimModel("qwen2.5-coder:7b", family="qwen2", size_bytes=4_683_087_332, context_window=32768),
    SimModel(
        "llava:7b", family="llama", size_bytes=4_733_363_377, vision=True, context_window=4096
    ),
    SimModel(
        "nomic-embed-text",
        family="nomic-bert",
        size_bytes=274_302_450,
        context_window=8192,
        embedding=True,
        chat=False,
    ),
)


@functools.lru_cache(maxsize=1024)
def token_pieces(model: str, prompt_text: str, tokens: int) -> tuple[str, ...]:
    """The generated pieces as an immutable, cached tuple (the handlers' hot path).

    Token ``i`` depends only on (model, prompt_text, i), so a capped generation is a prefix
    of a longer one.
    """
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    seed = hashlib.blake2b(f"{model}\x00{prompt_text}".encode(), digest_size=16).digest()
    pieces: list[str] = []
    for index in range(tokens):
        digest = hashlib.blake2b(seed + index.to_bytes(4, "little"), digest_size=4).digest()
        word = _VOCABULARY[int.from_bytes(digest, "little") % len(_VOCABULARY)]
        pieces.append(word if index == 0 else " " + word)
    return tuple(pieces)


# How many pieces a thinking model's reasoning has.
THINKING_TOKENS = 4


def thinking_pieces(model: str, prompt_text: str) -> tuple[str, ...]:
    """The reasoning a thinking model streams before its answer, one piece per chunk:
    as deterministic as the answer, and different from it."""
    return token_pieces(model, f"thinking\x00{prompt_text}", THINKING_TOKENS)


def expected_thinking(model: str, prompt_text: str) -> str:
    """The exact reasoning text the simulator sends when asked to think."""
    return "".join(thinking_pieces(model, prompt_text))


def expected_tokens(model: str, prompt_text: str, tokens: int) -> list[str]:
    """The pieces the simulator streams, one per chunk, in order.

    Args:
        model: the model name as sent in the request.
        prompt_text: the last user message's text (``/api/generate``: the prompt).
        tokens: how many tokens are generated (after any max_tokens / num_predict cap).
    """
    return list(token_pieces(model, prompt_text, tokens))


def expected_text(model: str, prompt_text: str, tokens: int) -> str:
    """The exact text the simulator answers with; ``"".join(expected_tokens(...))``."""
    return "".join(token_pieces(model, prompt_text, tokens))


def count_words(text: str) -> int:
    """Whitespace-separated words: the simulator's stand-in for a tokenizer."""
    return len(text.split())
