"""The dialect template: every error in the shape of the path's dialect, by table and over
HTTP; an unexpected failure inside a dialect's handling is a 500 in that dialect's shape,
logged once with its stack, and the process keeps serving."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from router.admission.idempotency import IdempotencyGate, KeptAnswers
from router.attempts.route import Route
from router.config import HttpSettings
from router.http.anthropic import AnthropicErrors
from router.http.app import DIALECTS, PREFIX_ERRORS
from router.http.dialect import PLAIN_ERRORS, dialect_route, error_handlers, shape_for
from router.http.edge import Api
from router.http.native import NativeErrors
from router.http.ollama import OllamaErrors
from router.http.openai import OpenAIErrors
from router.metrics import RouterMetrics
from router.service import bind_http
from router.serving.call import Call, Calls, Served
from services.images import ImageSettings
from services.wire import JobResponse, Result
from tests.conftest import RouterFactory
from tests.jobs import until

SHAPES = [*PREFIX_ERRORS, *(dialect.errors for dialect in DIALECTS)]


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v1/chat/completions", OpenAIErrors),
        ("/v1/", OpenAIErrors),
        ("/v1/nothing/here", OpenAIErrors),
        ("/v1/messages", AnthropicErrors),  # the longest prefix wins
        ("/v1/messages/count_tokens", AnthropicErrors),
        ("/v1/messages/batches", AnthropicErrors),
        ("/api/chat", OllamaErrors),
        ("/api/", OllamaErrors),
        ("/infer", NativeErrors),
        ("/v1", type(PLAIN_ERRORS)),  # no trailing slash: not under /v1/
        ("/apis", type(PLAIN_ERRORS)),
        ("/nodes/x", type(PLAIN_ERRORS)),
        ("/", type(PLAIN_ERRORS)),
    ],
)
def test_a_path_answers_errors_in_the_shape_of_its_longest_prefix(
    path: str, family: type[object]
) -> None:
    assert isinstance(shape_for(path, SHAPES), family)


@pytest.mark.parametrize(
    ("method", "path", "status", "body_of"),
    [
        ("POST", "/v1/nothing-here", 404, "openai"),
        ("GET", "/v1/chat/completions", 405, "openai"),
        ("GET", "/v1/messages", 405, "anthropic"),
        ("POST", "/v1/messages/batches", 404, "anthropic"),
        ("POST", "/api/nothing-here", 404, "ollama"),
        ("GET", "/api/chat", 405, "ollama"),
        ("POST", "/api/tags", 405, "ollama"),
        ("DELETE", "/api/", 404, "ollama"),
        ("GET", "/infer", 405, "plain"),
        ("GET", "/nowhere", 404, "plain"),
    ],
)
async def test_unknown_paths_and_methods_answer_in_their_prefix_dialects_shape(
    start_router: RouterFactory, method: str, path: str, status: int, body_of: str
) -> None:
    async with start_router() as router, httpx.AsyncClient(base_url=router.url) as http:
        answer = await http.request(method, path)
    assert answer.status_code == status
    body = answer.json()
    code = "NOT_FOUND" if status == 404 else "METHOD_NOT_ALLOWED"
    if body_of == "openai":
        assert body["error"]["code"] == code
        assert set(body["error"]) == {"message", "type", "code", "param"}
    elif body_of == "anthropic":
        assert body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
    elif body_of == "ollama":
        assert set(body) == {"error"}
        assert path in body["error"]
    else:
        assert body["error"]["code"] == code


Dispatch = Callable[[Call], Awaitable[Served]]


@asynccontextmanager
async def served(dispatch: Dispatch) -> AsyncIterator[httpx.AsyncClient]:
    """The dialects over `dispatch` (a stand-in dispatcher), on a loopback port."""
    gate = IdempotencyGate(
        dispatch,
        resolve_model=lambda _job, _agent: None,
        answers=KeptAnswers(ttl_s=60, max_entries=10, clock=lambda: 0.0),
    )
    http = HttpSettings()
    api = Api(http, ImageSettings(), Calls(10_000), gate, RouterMetrics(lambda: {}))
    app = Starlette(
        routes=[dialect_route(api, dialect) for dialect in DIALECTS],
        exception_handlers=error_handlers(SHAPES),
    )
    sock = bind_http("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started)
        port = sock.getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        server.should_exit = True
        await serving


async def failing(call: Call) -> Served:
    raise RuntimeError("a bug in the dispatcher")


async def fails_after_a_piece(call: Call) -> Served:
    assert call.on_piece is not None
    await call.on_piece("partial")
    raise RuntimeError("a bug after the first piece")


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/embeddings", {"input": "hi"}),
        ("/infer", {"prompt": "hi"}),
        ("/infer", {"prompt": "hi", "stream": True}),
    ],
)
async def test_an_unexpected_failure_is_a_500_in_the_dialects_shape_logged_once(
    caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any]
) -> None:
    caplog.set_level(logging.ERROR)
    async with served(failing) as http:
        answer = await http.post(path, json=body)
        again = await http.post(path, json=body)  # the server keeps serving
    assert answer.status_code == again.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "INTERNAL"
    if path.startswith("/v1/"):
        assert set(error) == {"message", "type", "code", "param"}
    else:
        assert answer.json()["status"] == "error"
    stacks = [record for record in caplog.records if record.exc_info]
    assert len(stacks) == 2  # one per request, each with its stack
    assert "a bug in the dispatcher" in caplog.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/infer", {"prompt": "hi", "stream": True}),
    ],
)
async def test_a_stream_that_fails_unexpectedly_after_its_first_piece_ends_with_an_error(
    caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any]
) -> None:
    caplog.set_level(logging.ERROR)
    async with served(fails_after_a_piece) as http:
        answer = await http.post(path, json=body)
    assert answer.status_code == 200
    assert "partial" in answer.text
    if path.startswith("/v1/"):
        events = [line[6:] for line in answer.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-1])["error"]["code"] == "INTERNAL"
    else:
        final = json.loads(answer.text.splitlines()[-1])
        assert final["error"]["code"] == "INTERNAL"
    assert len([record for record in caplog.records if record.exc_info]) == 1


async def test_a_plain_answer_passes_through_the_template() -> None:
    async def answers(call: Call) -> Served:
        result = Result(text="fine")
        return JobResponse(job_id=call.job.job_id, status="ok", result=result), Route()

    async with served(answers) as http:
        chat = await http.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "fine"
