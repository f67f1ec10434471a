"""What every Ollama route shares: body parsing, answers, errors, the model catalog lookup."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from aiohttp import web

from guardian_proxy import request_limits
from guardian_proxy.auth import allowed_models, check_model_scope
from guardian_proxy.catalog import Catalog, Entry
from guardian_proxy.context import ctx_of
from guardian_proxy.errors_http import ollama_error, ollama_from
from guardian_proxy.ollama import OllamaError, json_bytes, model_not_found
from guardian_proxy.relay import UpstreamError
from shared.errors import GuardianError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Built once: every streamed answer carries the same headers.
NDJSON_HEADERS = {
    "Content-Type": "application/x-ndjson",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def json_response(obj: Any, status: int = 200) -> web.Response:
    """One compact JSON object as Ollama answers it (`application/json; charset=utf-8`)."""
    return web.Response(body=json_bytes(obj), status=status, content_type="application/json", charset="utf-8")


def api(fn: Handler) -> Handler:
    """Turn errors raised before the answer started into Ollama's `{"error": ...}` with its status.

    Handlers that stream deal with errors after `prepare()` themselves (a final error line).
    """

    @wraps(fn)
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except OllamaError as e:
            return ollama_error(e.status, e.message)
        except GuardianError as e:
            return ollama_from(e)
        except UpstreamError as e:
            return ollama_error(e.status, str(e))

    return handler


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or the 400 Ollama gives for a missing or broken body."""
    raw = await request.read()
    if not raw.strip():
        raise OllamaError(400, "missing request body")
    try:
        body = request_limits.loads(raw)
    except ValueError as e:
        raise OllamaError(400, f"invalid request body: {e}") from None
    if not isinstance(body, dict):
        raise OllamaError(400, "request body must be a JSON object")
    if problem := request_limits.too_many_messages(body, ctx_of(request).config.settings.proxy.max_messages):
        raise OllamaError(400, problem)
    return body


def catalog_of(request: web.Request) -> Catalog:
    return ctx_of(request).catalog


async def resolve(request: web.Request, name: str) -> Entry:
    """The configured model `name` stands for (name, alias, with or without `:latest`), after
    checking the caller's key may use it: 404 `model 'x' not found`, 403 out of scope."""
    entry = await catalog_of(request).find(name)
    if entry is None:
        raise model_not_found(name)
    if not allowed_models(request, [name]):  # a key may list the alias the client uses
        check_model_scope(request, entry.name)
    return entry


def visible(request: web.Request, entry: Entry) -> bool:
    """Whether the caller's key may see `entry` in a listing."""
    return bool(allowed_models(request, [entry.name, *entry.aliases]))
