"""Errors as each API writes them: OpenAI `{"error": {...}}`, Ollama `{"error": "..."}`."""

from __future__ import annotations

import json

from aiohttp import web

from guardian_proxy.anthropic_api.errors import error_body
from shared.errors import Code, GuardianError

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


# GuardianError codes whose OpenAI `code` differs from the lower-cased name.
_OPENAI_CODES = {
    Code.MODEL_NOT_FOUND: "model_not_found",
    Code.DOES_NOT_FIT: "insufficient_memory",
    Code.QUEUE_FULL: "queue_full",
}


def is_openai(request: web.Request) -> bool:
    """Whether the request hit the OpenAI API (/v1/...), which answers errors in its own shape."""
    return request.path == "/v1" or request.path.startswith("/v1/")


def is_anthropic(request: web.Request) -> bool:
    """Whether the request hit the Anthropic Messages API, whose errors have their own shape."""
    return request.path == "/v1/messages" or request.path.startswith("/v1/messages/")


def anthropic_error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    """{"type":"error","error":{"type","message"}}, what the anthropic SDKs parse."""
    return web.Response(
        status=status,
        text=json.dumps(error_body(status, message)),
        content_type="application/json",
        headers=_headers(retry_after),
    )


def _headers(retry_after: int | None) -> dict[str, str] | None:
    return {"Retry-After": str(retry_after)} if retry_after else None


def openai_error(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    retry_after: int | None = None,
    type_: str | None = None,
) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": type_ or _OPENAI_TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=_headers(retry_after)
    )


def ollama_error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers=_headers(retry_after),
    )


def api_error(request: web.Request, status: int, message: str) -> web.Response:
    """An error in the shape of the API the request hit."""
    if is_anthropic(request):
        return anthropic_error(status, message)
    return openai_error(status, message) if is_openai(request) else ollama_error(status, message)


def openai_from(err: GuardianError) -> web.Response:
    code = _OPENAI_CODES.get(err.code, err.code.name.lower())
    param = "model" if err.code is Code.MODEL_NOT_FOUND else None
    return openai_error(err.code.http_status, err.message, code, param, err.code.retry_after)


def ollama_from(err: GuardianError) -> web.Response:
    return ollama_error(err.code.http_status, err.message, err.code.retry_after)
