"""The pure decisions behind the operator's tools, by tables of cases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.errors
import pytest

from node_worker.admission import node_capacity
from node_worker.service_api import wire_form
from node_worker.twins import is_twin
from router.config import load_router_settings
from services.bus import cancel_until_done, is_auth_refusal
from services.capabilities import Capabilities
from services.runtimes.base import ModelInfo
from services.runtimes.llamacpp import llamacpp_models, readable_model_name
from tools.up import router_config


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("/srv/models/Qwen2.5-7B-Instruct-Q4_K_M.gguf", "Qwen2.5-7B-Instruct-Q4_K_M"),
        ("tiny-first.gguf", "tiny-first"),
        ("C:\\models\\phi-3.GGUF", "phi-3"),
        ("/m/big-model-00001-of-00003.gguf", "big-model"),
        ("llama3:8b", "llama3:8b"),  # an alias or a runtime's own name stays as it is
        ("my-alias", "my-alias"),
    ],
)
def test_readable_model_name(model_id: str, name: str) -> None:
    assert readable_model_name(model_id) == name


def test_llamacpp_models_keep_the_id_as_alias_and_read_props() -> None:
    props = {"total_slots": 3, "default_generation_settings": {"n_ctx": 2048}}
    (model,) = llamacpp_models([ModelInfo("/m/x.gguf")], props)
    assert (model.name, model.aliases, model.runtime_id) == ("x", ("/m/x.gguf",), "/m/x.gguf")
    assert (model.context_window, model.parallel) == (2048, 3)
    (plain,) = llamacpp_models([ModelInfo("x", context_window=512)], None)
    assert (plain.name, plain.aliases, plain.runtime_id, plain.parallel) == ("x", (), None, None)
    assert plain.context_window == 512  # meta.n_ctx wins over /props


@pytest.mark.parametrize(
    ("configured", "slots", "capacity"),
    [
        (4, [], 4),  # nothing serves the kind: the configured number
        (4, [1], 1),  # llama-server -np 1
        (4, [1, 8], 4),  # the sum, capped by config
        (4, [None], 4),  # Ollama says nothing: config
        (8, [None, 2], 8),
        (16, [2, 3], 5),
    ],
)
def test_node_capacity(configured: int, slots: list[int | None], capacity: int) -> None:
    assert node_capacity(configured, slots) == capacity


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (nats.errors.Error("nats: 'Authorization Violation'"), True),
        (nats.errors.AuthorizationError(), True),
        (nats.errors.Error("nats: 'Authentication Timeout'"), True),
        (ConnectionRefusedError(111, "Connection refused"), False),
        (nats.errors.Error("nats: 'Permissions Violation for Subscription to \"x\"'"), False),
    ],
)
def test_is_auth_refusal(error: Exception, refused: bool) -> None:
    assert is_auth_refusal(error) is refused


def _record(node_id: str, instance: str | None) -> Capabilities:
    return Capabilities(node_id=node_id, version="0", seq=1, ts=0.0, ttl_s=30, instance=instance)


@pytest.mark.parametrize(
    ("record", "twin"),
    [
        (_record("gpu-a", "other"), True),
        (_record("gpu-a", "me"), False),  # our own heartbeat
        (_record("gpu-a", None), False),  # an older worker that sends no instance
        (_record("gpu-b", "other"), False),
    ],
)
def test_is_twin(record: Capabilities, twin: bool) -> None:
    assert is_twin(record, "gpu-a", "me") is twin


def test_wire_form_sends_an_object_not_null_as_data() -> None:
    reply = {"endpoints": [{"name": "llm", "data": None}, {"name": "caps", "data": {"k": 1}}]}
    assert wire_form(reply)["endpoints"] == [
        {"name": "llm", "data": {}},
        {"name": "caps", "data": {"k": 1}},
    ]


@pytest.mark.parametrize("port", [8090, 9000])  # 8090 is the default: once dropped as such
def test_up_router_config_names_where_it_listens_and_loads(tmp_path: Path, port: int) -> None:
    text = router_config("local", "nats://127.0.0.1:4222", port, ("ollama", "http://x:1"))
    (tmp_path / "router.yml").write_text(text)
    settings = load_router_settings(tmp_path / "router.yml")
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", port)
    assert settings.local_runtime is not None


async def test_a_task_that_loses_a_cancellation_is_cancelled_until_it_ends() -> None:
    """As nats-py's connect loop does when asyncio.wait_for hands it a refused
    connection instead of the cancellation: the first cancel is lost, the loop goes on."""
    lost = 0

    async def connecting_forever() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if lost == 0 and task is not None:
                    lost += 1
                    task.uncancel()
                    continue
                raise

    task = asyncio.create_task(connecting_forever())
    await asyncio.sleep(0)
    await cancel_until_done(task)
    assert task.cancelled()
    assert lost == 1
