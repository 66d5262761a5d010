"""What Ollama's dialects share: its error body, `{"error": "<message>"}` with the HTTP
status of the error, for every path under `/api/` (unknown ones included)."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from services.errors import HTTP_STATUS, InferbusError

__all__ = ["OLLAMA_ERRORS", "OllamaErrors"]


class OllamaErrors:
    prefix = "/api/"

    def refusal(self, error: InferbusError) -> Response:
        return self.unknown(error.code.value, error.message, HTTP_STATUS[error.code])

    def unknown(self, code: str, message: str, status: int) -> Response:
        return JSONResponse({"error": message}, status)


OLLAMA_ERRORS = OllamaErrors()
