"""Bounds on what one request may ask of the proxy and of llama-server.

- Compressed request bodies are refused (415): 8 KiB of gzip inflates to megabytes before any
  size limit sees it, and no Ollama or OpenAI client sends them.
- JSON nested past Python's recursion limit is a 400 in the API's shape, not a plain 500.
- `messages` is capped (proxy.max_messages): llama-server's template rendering is superlinear
  in the message count, so 16,000 tiny messages cost seconds of its CPU.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from guardian_proxy.errors_http import api_error

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def loads(raw: bytes) -> Any:
    """json.loads, with too-deep nesting as a ValueError (callers answer 400) instead of
    RecursionError."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON is nested too deeply; flatten the request body") from None


def too_many_messages(payload: dict[str, Any], limit: int) -> str | None:
    messages = payload.get("messages")
    if isinstance(messages, list) and len(messages) > limit:
        return (
            f"too many messages: {len(messages)} in one request, the limit is {limit} "
            "(proxy.max_messages in settings.yaml); drop or summarize older turns"
        )
    return None


def make_encoding_middleware() -> Middleware:
    @web.middleware
    async def refuse_compressed(request: web.Request, handler: Handler) -> web.StreamResponse:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if request.method in _BODY_METHODS and encoding not in ("", "identity"):
            return api_error(
                request,
                415,
                f"compressed request bodies (Content-Encoding: {encoding}) are not accepted; "
                "send the JSON uncompressed",
            )
        return await handler(request)

    return refuse_compressed
