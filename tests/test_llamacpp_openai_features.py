"""Structured output and embeddings through the worker from a real llama.cpp server.

The model has random weights, so only what the server's grammar enforces is checked: with
a JSON schema the answer must parse and validate whatever the weights say. Embeddings come
from a second server started with `--embedding True`, named so that the worker's
names-as-a-last-resort capabilities call it an embedding model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import jsonschema
import pytest
from gguf import PoolingType
from nats.aio.client import Client as NatsClient

from tests.conftest import WorkerFactory, backend
from tests.jobs import ask, llm
from tests.llamacpp import LlamaCppServer
from tests.tiny_gguf import write_tiny_llama_gguf

CHOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
    },
    "required": ["color", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
async def embedding_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[LlamaCppServer]:
    model_path = write_tiny_llama_gguf(
        tmp_path_factory.mktemp("embed") / "tiny-embed.gguf", pooling=PoolingType.MEAN
    )
    async with LlamaCppServer(
        model_path, model_alias="tiny-embed", extra_args=("--embedding", "True")
    ) as server:
        yield server


async def test_a_json_schema_is_enforced_by_the_servers_grammar(
    nc: NatsClient, llama_server: LlamaCppServer, start_worker: WorkerFactory, node_id: str
) -> None:
    job = {
        "prompt": "pick a color",
        "params": {"max_tokens": 48, "temperature": 0},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "choice", "schema": CHOICE_SCHEMA, "strict": True},
        },
    }
    async with start_worker(backends=[backend(llama_server.url, kind="llamacpp")]):
        response = await ask(nc, llm(node_id), job, timeout_s=60)
    assert response.status == "ok", response.error
    assert response.result is not None
    jsonschema.validate(json.loads(response.result.text), CHOICE_SCHEMA)


async def test_tools_to_a_server_that_reports_no_tool_support_are_refused(
    nc: NatsClient, llama_server: LlamaCppServer, start_worker: WorkerFactory, node_id: str
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    async with start_worker(backends=[backend(llama_server.url, kind="llamacpp")]):
        response = await ask(nc, llm(node_id), {"prompt": "call f", "tools": [tool]})
    assert response.error is not None
    assert response.error.code == "BAD_REQUEST"
    assert response.error.message.startswith("tools: ")


async def test_embeddings_from_an_embedding_enabled_server(
    nc: NatsClient,
    embedding_server: LlamaCppServer,
    start_worker: WorkerFactory,
    node_id: str,
) -> None:
    texts = ["the cat sat", "a dog ran far", "the cat sat"]
    async with start_worker(backends=[backend(embedding_server.url, kind="llamacpp")]) as worker:
        record = worker.capabilities(1)
        response = await ask(nc, f"node.{node_id}.embed.request", {"input": texts}, timeout_s=60)
    assert [(m.name, m.type, m.capabilities) for m in record.served_models] == [
        ("tiny-embed", "embed", ("embedding",))
    ]
    assert response.status == "ok", response.error
    assert response.result is not None
    vectors = response.result.embeddings
    assert vectors is not None
    assert len(vectors) == 3
    assert len({len(vector) for vector in vectors}) == 1
    assert len(vectors[0]) > 1
    # The same text embeds the same (batch position moves the last float bits only).
    assert vectors[0] == pytest.approx(vectors[2], rel=1e-4, abs=1e-5)
    assert vectors[0] != pytest.approx(vectors[1], rel=1e-2)
    assert response.result.usage.prompt_tokens > 0
