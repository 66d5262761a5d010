"""A fake inference runtime that speaks Ollama's and OpenAI's wire formats on one port.

Used by tests, benchmarks and demos in place of a GPU runtime: deterministic answers
(`expected_text`; a thinking model's reasoning, `expected_thinking`), configurable
latency, and injectable faults (`Fault`) that a client observes exactly as it would from
a failing Ollama, vLLM or llama.cpp server.

    async with Simulator(models=[SimModel("llama3:8b")]) as sim:
        sim.set_fault("llama3:8b", Fault("error", count=2))
        sim.set_key("key-a", KeyBehaviour("rate_limited", retry_after_s=30))  # a cloud provider
        ...  # talk to sim.url with any HTTP client
"""

from tools.simulator.cloud import KEY_KINDS, KeyBehaviour
from tools.simulator.faults import FAULT_KINDS, Fault
from tools.simulator.features import embedding as expected_embedding
from tools.simulator.llama_server import LlamaServerTraits
from tools.simulator.models import (
    DEFAULT_MODELS,
    SimModel,
    expected_text,
    expected_thinking,
    expected_tokens,
)
from tools.simulator.server import Simulator

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_KINDS",
    "KEY_KINDS",
    "Fault",
    "KeyBehaviour",
    "LlamaServerTraits",
    "SimModel",
    "Simulator",
    "expected_embedding",
    "expected_text",
    "expected_thinking",
    "expected_tokens",
]
