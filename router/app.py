"""The router's HTTP API (Starlette): native `/infer`, OpenAI-compatible chat, the fleet.

Every answer says how it was served (`route`). Errors use DESIGN §3's HTTP statuses;
the OpenAI route wraps them in OpenAI's error body so official clients raise the right
exception class.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette import routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from router.auth import RequireApiKey
from router.fleet_views import ModelsView, NodesQuery, nodes_page
from router.idempotency import IdempotencyGate, gate_for, tenant_of
from router.images import checked_images
from router.metrics import RouterMetrics
from router.providers_api import providers_route
from router.route import Route
from router.serving import Router
from router.streams import NdjsonLines, OpenAIChunks, stream_response
from services.errors import HTTP_STATUS, ErrorCode, InferbusError
from services.wire import JobRequest, JobResponse, request_from_fields

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def status_of(response: JobResponse) -> int:
    return 200 if response.error is None else HTTP_STATUS[response.error.code]


def openai_completion(
    response: JobResponse, route: Route, requested_model: str | None
) -> dict[str, Any]:
    result = response.result
    usage = result.usage if result else None
    return {
        "id": f"chatcmpl-{response.job_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model or requested_model or "",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text if result else ""},
                "finish_reason": (result.finish_reason if result else None) or "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": (usage.prompt_tokens + usage.completion_tokens) if usage else 0,
        },
        "route": route.model_dump(),
    }


def openai_error(code: ErrorCode, message: str, status: int) -> JSONResponse:
    kind = _OPENAI_ERROR_TYPES.get(status, "api_error")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code.value, "param": None}},
        status_code=status,
    )


def native_answer(response: JobResponse, route: Route) -> JSONResponse:
    body = response.model_dump(mode="json", exclude_none=True) | {"route": route.model_dump()}
    return JSONResponse(body, status_of(response), headers=retry_after_headers(response))


def openai_error_of(response: JobResponse) -> JSONResponse:
    assert response.error is not None
    error = response.error
    answer = openai_error(error.code, error.message, HTTP_STATUS[error.code])
    answer.headers.update(retry_after_headers(response))
    return answer


def largest_image_bytes(job: JobRequest) -> int:
    """The decoded size of the job's largest inline image (URLs count as nothing)."""
    largest = 0
    for message in job.chat_messages():
        for image in message.all_images:
            if image.startswith(("http://", "https://")):
                continue
            encoded = image.partition("base64,")[2] or image
            largest = max(largest, len(encoded) * 3 // 4)
    return largest


async def read_body(request: Request, limit: int) -> bytes | InferbusError:
    """The body, refused as soon as it grows past `limit` (never buffered beyond it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _too_large(int(declared), limit)
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            return _too_large(size, limit, at_least=True)
        parts.append(part)
    return b"".join(parts)


def _too_large(size: int, limit: int, *, at_least: bool = False) -> InferbusError:
    more = "more than " if at_least else ""
    return InferbusError(
        ErrorCode.PAYLOAD_TOO_LARGE, f"body is {more}{size} bytes; the limit is {limit}"
    )


def parse_json(body: bytes) -> Any:
    """The JSON value, or BAD_REQUEST for anything the parser (or UTF-8) cannot take:
    not JSON, nested too deep, lone surrogates that could never be sent on."""
    try:
        raw = json.loads(body)
        # Lone surrogates ("\ud800") are valid JSON but no valid UTF-8: refuse them here,
        # not when the job is encoded for a node.
        json.dumps(raw, ensure_ascii=False).encode()
    except (ValueError, RecursionError, UnicodeError) as error:
        return InferbusError(ErrorCode.BAD_REQUEST, f"the body is not usable JSON ({error})"[:200])
    return raw


def retry_after_headers(response: JobResponse) -> dict[str, str]:
    """`Retry-After` (whole seconds, rounded up) when the answer says when to come back."""
    error = response.error
    if error is None or error.retry_after_ms is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(error.retry_after_ms / 1000)))}


def _agent(value: object) -> str | None:
    return value if isinstance(value, str) else None


def build_app(
    router: Router, metrics: RouterMetrics, gate: IdempotencyGate | None = None
) -> ASGIApp:
    settings = router.settings
    keyed = gate or gate_for(router)

    def tenant(request: Request) -> str:
        configured = bool(settings.http.api_keys)
        return tenant_of(request.headers.get("authorization"), keys_configured=configured)

    async def read_job(request: Request) -> tuple[JobRequest, dict[str, Any]] | InferbusError:
        """The body as a job, plus its raw fields; the Idempotency-Key header applied."""
        body = await read_body(request, settings.http.max_body_bytes)
        if isinstance(body, InferbusError):
            return body
        raw = parse_json(body)
        if isinstance(raw, InferbusError):
            return raw
        if not isinstance(raw, dict):
            return InferbusError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
        key = request.headers.get("idempotency-key")
        if key:
            raw["idempotency_key"] = key
        decoded = request_from_fields(raw)  # no `type`: the router decides (images → vision)
        if isinstance(decoded, InferbusError):
            return decoded
        too_big = largest_image_bytes(decoded)
        if too_big > settings.http.max_image_bytes:
            return InferbusError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"an image is {too_big} bytes; the limit is {settings.http.max_image_bytes}",
            )
        checked = await checked_images(decoded, settings.images)
        return checked if isinstance(checked, InferbusError) else (checked, raw)

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        parsed = await read_job(request)
        if isinstance(parsed, InferbusError):
            failed = JobResponse.failure("", parsed)
            metrics.answered("infer", Route(), parsed.code.value, time.perf_counter() - started)
            return native_answer(failed, Route())
        job, raw = parsed
        agent_id = _agent(raw.get("agent_id"))
        if job.stream:
            return await stream_response(
                lambda sink: keyed.infer(
                    job, agent_id=agent_id, on_delta=sink, tenant=tenant(request)
                ),
                NdjsonLines(job.job_id),
                on_error_before_first_token=native_answer,
                on_finished=finished("infer", started),
            )
        response, route = await keyed.infer(job, agent_id=agent_id, tenant=tenant(request))
        finished("infer", started)(response, route)
        return native_answer(response, route)

    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        parsed = await read_job(request)
        if isinstance(parsed, InferbusError):
            metrics.answered("openai", Route(), parsed.code.value, time.perf_counter() - started)
            return openai_error(parsed.code, parsed.message, HTTP_STATUS[parsed.code])
        job, raw = parsed
        agent_id = _agent(raw.get("user") or request.headers.get("x-agent-id"))
        if job.stream:
            options = raw.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            chunks = OpenAIChunks(job.job_id, job.model, include_usage)
            return await stream_response(
                lambda sink: keyed.infer(
                    job,
                    agent_id=agent_id,
                    on_delta=sink,
                    on_model=chunks.use_model,
                    tenant=tenant(request),
                ),
                chunks,
                on_error_before_first_token=lambda answer, _route: openai_error_of(answer),
                on_finished=finished("openai", started),
            )
        response, route = await keyed.infer(job, agent_id=agent_id, tenant=tenant(request))
        finished("openai", started)(response, route)
        if response.error is not None:
            return openai_error_of(response)
        return JSONResponse(openai_completion(response, route, job.model))

    def finished(api: str, started: float) -> Callable[[JobResponse, Route], None]:
        def count(response: JobResponse, route: Route) -> None:
            status = response.error.code.value if response.error else "ok"
            metrics.answered(api, route, status, time.perf_counter() - started)

        return count

    models_view = ModelsView(router.fleet.index)

    async def models(_: Request) -> Response:
        return Response(models_view.body(), media_type="application/json")

    async def nodes(request: Request) -> Response:
        try:
            query = NodesQuery.of(request.query_params)
        except ValueError as error:
            return JSONResponse(
                {"error": {"code": ErrorCode.BAD_REQUEST.value, "message": str(error)}}, 400
            )
        now = router.fleet.clock()
        page = nodes_page(
            router.fleet.index,
            query,
            now=now,
            breakers_of=lambda node: router.board.of_node(node, now),
        )
        return JSONResponse(page)

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        connected = router.nc.is_connected
        routes = router.fleet.index.serves_anything() or router.local_runtime is not None
        body = {"nats_connected": connected, "route_possible": routes}
        return JSONResponse(body, 200 if connected and routes else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            routing.Route("/infer", infer, methods=["POST"]),
            routing.Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            routing.Route("/v1/models", models, methods=["GET"]),
            routing.Route("/nodes", nodes, methods=["GET"]),
            routing.Route("/health", health, methods=["GET"]),
            routing.Route("/ready", ready, methods=["GET"]),
            routing.Route("/metrics", prometheus, methods=["GET"]),
            providers_route(router.cloud),
        ]
    )
    keys = [key.get_secret_value() for key in settings.http.api_keys]
    return RequireApiKey(app, keys) if keys else app
