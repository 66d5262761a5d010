"""What Ollama's dialects share: its error body, `{"error": "<message>"}` with the HTTP
status of the error, for every path under `/api/` (unknown ones included), and the base
of its job dialects (router/http/ollama_chat.py, ollama_embed.py).

Ollama clients read the message: a model nobody serves says `model ... not found`, as
Ollama's own does (the `ollama` CLI offers to pull on it), and a refusal with a
`Retry-After` keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from router.attempts.route import Route
from router.http.dialect import JobFields
from router.http.edge import agent_of, retry_after_headers
from router.http.ollama_answers import ollama_message
from router.http.ollama_requests import OLLAMA_SPELLED, served_name
from services.errors import HTTP_STATUS, InferbusError
from services.wire import JobResponse

__all__ = [
    "OLLAMA_ERRORS",
    "OllamaDialect",
    "OllamaErrors",
    "Serves",
    "ollama_error",
]

# Whether some fresh node serves a model of this name (the `/api/tags` catalog).
Serves = Callable[[str], bool]


def ollama_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class OllamaErrors:
    prefix = "/api/"

    def refusal(self, error: InferbusError) -> Response:
        return ollama_error(HTTP_STATUS[error.code], ollama_message(error.code, error.message))

    def unknown(self, code: str, message: str, status: int) -> Response:
        return ollama_error(status, message)


OLLAMA_ERRORS = OllamaErrors()


class OllamaDialect:
    """What Ollama's job dialects share: a body is read by `shape` into job fields, its
    model named as the fleet serves it (`served_name`: a name without a tag is its
    `:latest`), the agent from `X-Agent-Id`; failures in Ollama's error body. A dialect
    adds its `name`, `path`, `shape`, `answer` and `stream`."""

    errors: OllamaErrors = OLLAMA_ERRORS

    def __init__(self, serves: Serves) -> None:
        self._serves = serves

    def shape(self, body: dict[str, Any]) -> dict[str, Any] | InferbusError:
        raise NotImplementedError

    def read(self, body: dict[str, Any], headers: Headers) -> JobFields | InferbusError:
        fields = self.shape(body)
        if isinstance(fields, InferbusError):
            return fields
        fields["model"] = served_name(fields["model"], self._serves)
        return JobFields(fields, agent_of(headers.get("x-agent-id")), OLLAMA_SPELLED)

    def failed(self, response: JobResponse, route: Route) -> Response:
        assert response.error is not None
        error = response.error
        answer = ollama_error(HTTP_STATUS[error.code], ollama_message(error.code, error.message))
        answer.headers.update(retry_after_headers(response))
        return answer
