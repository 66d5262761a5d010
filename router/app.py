"""The router's HTTP API (Starlette): native `/infer`, OpenAI-compatible chat, the fleet.

Every answer says how it was served (`route`). Errors use DESIGN §3's HTTP statuses;
the OpenAI route wraps them in OpenAI's error body so official clients raise the right
exception class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as Path
from starlette.types import ASGIApp

from router.auth import RequireApiKey
from router.images import checked_images
from router.metrics import RouterMetrics
from router.route import Route
from router.routing import Router
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


def native_error(response: JobResponse, route: Route) -> JSONResponse:
    body = response.model_dump(mode="json", exclude_none=True) | {"route": route.model_dump()}
    return JSONResponse(body, status_of(response))


def openai_error_of(response: JobResponse) -> JSONResponse:
    assert response.error is not None
    error = response.error
    return openai_error(error.code, error.message, HTTP_STATUS[error.code])


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


def _agent(value: object) -> str | None:
    return value if isinstance(value, str) else None


def build_app(router: Router, metrics: RouterMetrics) -> ASGIApp:
    settings = router.settings

    async def read_job(request: Request) -> tuple[JobRequest, dict[str, Any]] | InferbusError:
        """The body as a job, plus its raw fields; the Idempotency-Key header applied."""
        body = await request.body()
        if len(body) > settings.http.max_body_bytes:
            return InferbusError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"body is {len(body)} bytes; the limit is {settings.http.max_body_bytes}",
            )
        try:
            raw = json.loads(body)
        except ValueError:
            return InferbusError(ErrorCode.BAD_REQUEST, "the body is not JSON")
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
            return native_error(failed, Route())
        job, raw = parsed
        agent_id = _agent(raw.get("agent_id"))
        if job.stream:
            return await stream_response(
                lambda sink: router.infer(job, agent_id=agent_id, on_delta=sink),
                NdjsonLines(job.job_id),
                on_error_before_first_token=native_error,
                on_finished=finished("infer", started),
            )
        response, route = await router.infer(job, agent_id=agent_id)
        finished("infer", started)(response, route)
        body = response.model_dump(mode="json", exclude_none=True) | {"route": route.model_dump()}
        return JSONResponse(body, status_of(response))

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
            return await stream_response(
                lambda sink: router.infer(job, agent_id=agent_id, on_delta=sink),
                OpenAIChunks(job.job_id, job.model, include_usage),
                on_error_before_first_token=lambda answer, _route: openai_error_of(answer),
                on_finished=finished("openai", started),
            )
        response, route = await router.infer(job, agent_id=agent_id)
        finished("openai", started)(response, route)
        if response.error is not None:
            return openai_error_of(response)
        return JSONResponse(openai_completion(response, route, job.model))

    def finished(api: str, started: float) -> Callable[[JobResponse, Route], None]:
        def count(response: JobResponse, route: Route) -> None:
            status = response.error.code.value if response.error else "ok"
            metrics.answered(api, route, status, time.perf_counter() - started)

        return count

    async def models(_: Request) -> Response:
        owners: dict[str, set[str]] = {}
        for candidate in router.fleet.candidates():
            owners.setdefault(candidate.name, set()).add(candidate.node)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": ",".join(sorted(nodes))}
            for name, nodes in sorted(owners.items())
        ]
        return JSONResponse({"object": "list", "data": data})

    async def nodes(_: Request) -> Response:
        now = router.fleet.clock()
        breakers = router.breakers.snapshot(now)
        view = [
            {
                "node_id": node_id,
                "age_s": round(node.age_s(now), 3),
                "stale": node.stale(now),
                "local": node_id == settings.local_node,
                "breakers": breakers.get(node_id, {}),
                "router_inflight": {
                    kind: count
                    for (nid, kind), count in router.fleet.inflight.items()
                    if nid == node_id
                },
                "record": node.record.model_dump(mode="json", exclude_none=True),
            }
            for node_id, node in sorted(router.fleet.nodes.items())
        ]
        return JSONResponse({"nodes": view, "local_node": settings.local_node})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        connected = router.nc.is_connected
        routes = bool(router.fleet.candidates()) or router.local_runtime is not None
        body = {"nats_connected": connected, "route_possible": routes}
        return JSONResponse(body, 200 if connected and routes else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Path("/infer", infer, methods=["POST"]),
            Path("/v1/chat/completions", chat_completions, methods=["POST"]),
            Path("/v1/models", models, methods=["GET"]),
            Path("/nodes", nodes, methods=["GET"]),
            Path("/health", health, methods=["GET"]),
            Path("/ready", ready, methods=["GET"]),
            Path("/metrics", prometheus, methods=["GET"]),
        ]
    )
    keys = [key.get_secret_value() for key in settings.http.api_keys]
    return RequireApiKey(app, keys) if keys else app
