"""The worker's pure parts: model catalog, admission slots, what idempotency keeps."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from node_worker.admission import Admission
from node_worker.catalog import Catalog, RuntimeListing, classify_model
from node_worker.config import load_worker_settings
from services.errors import ErrorCode, InferbusError
from services.runtimes import make_runtime
from services.runtimes.base import ModelInfo, Runtime, RuntimeKind
from services.wire import JobResponse, Result, Usage, is_replayable


def listed(kind: RuntimeKind, url: str = "http://127.0.0.1:9") -> Runtime:
    """A real adapter that catalogs only list; nothing here ever calls it."""
    return make_runtime(kind, url, httpx.AsyncClient())


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (ModelInfo("qwen3:8b"), "llm"),
        (ModelInfo("llava:7b"), "vision"),
        (ModelInfo("qwen2.5-vl-7b"), "vision"),
        (ModelInfo("qwen2.5-coder:7b"), "code"),
        (ModelInfo("nomic-embed-text"), "embed"),
        # the runtime's own metadata beats the name
        (ModelInfo("gemma3:4b", capabilities=("completion", "vision")), "vision"),
        (ModelInfo("llava-but-text", capabilities=("completion",)), "llm"),
        (ModelInfo("mystery", capabilities=("embedding",)), "embed"),
    ],
)
def test_model_type_from_metadata_first_then_name(info: ModelInfo, expected: str) -> None:
    assert classify_model(info) == expected


def test_model_on_two_runtimes_is_served_by_the_better_one() -> None:
    ollama, vllm, lmstudio = listed("ollama"), listed("vllm"), listed("lmstudio")
    catalog = Catalog(
        [
            RuntimeListing(ollama, [ModelInfo("m"), ModelInfo("only-ollama")]),
            RuntimeListing(lmstudio, [ModelInfo("m")]),
            RuntimeListing(vllm, [ModelInfo("m")]),
        ]
    )
    assert catalog.models["m"].runtime is vllm
    assert catalog.models["only-ollama"].runtime is ollama


def test_same_kind_twice_keeps_the_first_configured() -> None:
    first, second = listed("ollama", "http://a"), listed("ollama", "http://b")
    catalog = Catalog(
        [RuntimeListing(first, [ModelInfo("m")]), RuntimeListing(second, [ModelInfo("m")])]
    )
    assert catalog.models["m"].runtime is first


@pytest.mark.parametrize(
    ("job_type", "models", "expected"),
    [
        ("llm", [ModelInfo("b"), ModelInfo("a")], "a"),
        ("llm", [ModelInfo("b", running=True), ModelInfo("a")], "b"),
        ("code", [ModelInfo("llama"), ModelInfo("qwen-coder")], "qwen-coder"),
        ("code", [ModelInfo("llama")], "llama"),
        ("llm", [ModelInfo("qwen-coder")], "qwen-coder"),
        ("vision", [ModelInfo("llama"), ModelInfo("llava")], "llava"),
    ],
)
def test_default_model_per_job_type(job_type: str, models: list[ModelInfo], expected: str) -> None:
    catalog = Catalog([RuntimeListing(listed("ollama"), models)])
    assert catalog.resolve(None, job_type).name == expected  # type: ignore[arg-type]


def test_missing_models_are_model_not_found_or_unavailable() -> None:
    catalog = Catalog([RuntimeListing(listed("ollama"), [ModelInfo("llama")])])
    with pytest.raises(InferbusError) as missing:
        catalog.resolve("gpt-x", "llm")
    assert missing.value.code == ErrorCode.MODEL_NOT_FOUND
    with pytest.raises(InferbusError) as no_vision:
        catalog.resolve(None, "vision")
    assert no_vision.value.code == ErrorCode.MODEL_NOT_FOUND
    with pytest.raises(InferbusError) as nothing:
        Catalog([]).resolve(None, "llm")
    assert nothing.value.code == ErrorCode.BACKEND_UNAVAILABLE


def test_admission_refuses_beyond_capacity_and_code_shares_llm_slots() -> None:
    admission = Admission(llm_capacity=2, vision_capacity=1)
    assert admission.try_acquire("llm")
    assert admission.try_acquire("code")
    assert not admission.try_acquire("llm")
    assert admission.try_acquire("vision")
    assert not admission.try_acquire("vision")
    admission.release("code")
    assert admission.try_acquire("llm")
    assert admission.load()["llm"].inflight == 2


def _error(code: ErrorCode) -> JobResponse:
    return JobResponse.failure("j", InferbusError(code, "x"))


@pytest.mark.parametrize(
    ("response", "kept"),
    [
        (JobResponse(job_id="j", status="ok", result=Result(text="t", usage=Usage())), True),
        (_error(ErrorCode.BAD_REQUEST), True),
        (_error(ErrorCode.CONTEXT_EXCEEDED), True),
        (_error(ErrorCode.BUSY), False),
        (_error(ErrorCode.DEADLINE_EXCEEDED), False),
        (_error(ErrorCode.BACKEND_UNAVAILABLE), False),
        (_error(ErrorCode.BACKEND_ERROR), False),
        (_error(ErrorCode.MODEL_NOT_FOUND), False),
        (_error(ErrorCode.INTERNAL), False),
    ],
)
def test_only_answers_that_would_repeat_are_cached(response: JobResponse, kept: bool) -> None:
    assert is_replayable(response) is kept


def test_the_example_config_an_operator_copies_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "ops" / "worker.example.toml"
    settings = load_worker_settings(example)
    assert settings.node_id == "gpu-a"
    assert settings.backends[0].kind == "ollama"
