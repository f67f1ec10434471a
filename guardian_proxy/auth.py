"""API-key authentication for the proxy's API routes, and the key-creation command.

    python -m guardian_proxy.auth NAME [--models m1,m2] [--expires 30d] [--data-dir DIR]

The middleware answers 401/403 in the shape of the API that was hit (OpenAI for /v1/...,
Ollama for everything else) so each client library shows the message to its user.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import click
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from guardian_proxy.errors_http import anthropic_error, is_anthropic, is_openai, ollama_error, openai_error
from shared.errors import GuardianError
from shared.keystore import KeyRecord, KeyStore, keys_path

log = logging.getLogger(__name__)


# The record of the key that authenticated this request; None when auth is not required.
API_KEY: web.RequestKey[KeyRecord | None] = web.RequestKey("api_key", KeyRecord)

# Clients probe these to detect an Ollama server before they have a key configured.
_OPEN_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version")}
)

_HOW_TO_CREATE = "create one with: guardianctl keys create NAME"
_REASONS = {
    "malformed": f"invalid API key: keys start with 'flip_'; {_HOW_TO_CREATE}",
    "unknown": f"invalid API key: it is unknown or has been revoked; {_HOW_TO_CREATE}",
    "expired": f"API key has expired; {_HOW_TO_CREATE}",
}


def _unauthorized(request: web.Request, message: str) -> web.Response:
    if is_anthropic(request):
        resp = anthropic_error(401, message)
    elif is_openai(request):
        resp = openai_error(401, message, "invalid_api_key")
    else:
        resp = ollama_error(401, message)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="guardian"'
    return resp


def _presented_key(request: web.Request) -> str | None:
    """`Authorization: Bearer <key>` first, then `X-Api-Key: <key>`; None if neither."""
    auth = request.headers.get("Authorization", "").strip()
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = request.headers.get("X-Api-Key", "").strip()
    return api_key or None


presented_key = _presented_key  # the dashboard's admin actions read keys the same way


async def _flush_quietly(store: KeyStore) -> bool:
    """Last-use bookkeeping must never fail a request; log and let the next flush retry."""
    try:
        return await store.flush_async()
    except Exception:
        log.exception("could not record API key last use in %s", store.path)
        return False


def make_auth_middleware(store: KeyStore, required: Callable[[], bool]) -> Middleware:
    """Middleware that demands a valid key on every route but the open probes.

    `required()` is asked on each request (after the key file is refreshed), so the caller can
    implement "settings auth.required, default: true once any key exists" with
    `lambda: cfg if cfg is not None else store.keys_seen()`.
    """
    # Strong references to background flushes, or the loop may drop them mid-write.
    pending_flushes: set[asyncio.Task[bool]] = set()

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method, request.path) in _OPEN_ROUTES:
            request[API_KEY] = None
            return await handler(request)
        await store.maybe_refresh()  # one stat per 0.25 s at most, in a thread
        if not required():
            request[API_KEY] = None
            return await handler(request)
        if not store.any_keys():
            return _unauthorized(
                request,
                "API keys are required but none exist (all were revoked, or the key file was "
                "emptied or deleted); " + _HOW_TO_CREATE + ", or set 'auth.required: false' "
                "in settings.yaml to serve without keys",
            )
        secret = _presented_key(request)
        if secret is None:
            return _unauthorized(
                request,
                "missing API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'; "
                + _HOW_TO_CREATE,
            )
        record, reason = store.check(secret)
        if reason == "unknown" and await store.refresh_for_unknown():
            record, reason = store.check(secret)  # a key created since the last look
        if record is None:
            return _unauthorized(request, _REASONS[reason])
        request[API_KEY] = record
        store.touch(record)
        if store.flush_due():
            task = asyncio.create_task(_flush_quietly(store))
            pending_flushes.add(task)
            task.add_done_callback(pending_flushes.discard)
        return await handler(request)

    return auth_middleware


def get_api_key(request: web.Request) -> KeyRecord | None:
    """The key that authenticated this request, or None (open route or auth not required)."""
    return request.get(API_KEY)


def check_model_scope(request: web.Request, model: str) -> None:
    """Raise 404 (in the API's shape) if the request's key may not use `model`: the very
    answer a model that does not exist gets, so a scoped key cannot probe which names do."""
    record = get_api_key(request)
    if record is None or record.allows(model):
        return
    message = f"model '{model}' not found"
    if is_anthropic(request):
        resp = anthropic_error(404, message)
    elif is_openai(request):
        resp = openai_error(404, message, "model_not_found", "model")
    else:
        resp = ollama_error(404, message)
    raise web.HTTPNotFound(text=resp.text, content_type="application/json")


def allowed_models(request: web.Request, names: Iterable[str]) -> list[str]:
    """Filter a model listing (/api/tags, /v1/models) to what the request's key may use."""
    record = get_api_key(request)
    return [n for n in names if record is None or record.allows(n)]


@click.command()
@click.argument("name")
@click.option("--models", default=None, help="Comma-separated models this key may use (default: all).")
@click.option("--expires", default=None, help="Lifetime like 30d, 12h, 90m, 2w, or an ISO date.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("GUARDIAN_DATA_DIR", "./data"),
    show_default="$GUARDIAN_DATA_DIR or ./data",
    help="Directory holding api_keys.json.",
)
def main(name: str, models: str | None, expires: str | None, data_dir: Path) -> None:
    """Create API key NAME and print it once."""
    try:
        store = KeyStore(keys_path(data_dir))
        secret, record = store.create(name, models.split(",") if models else None, expires)
    except GuardianError as e:
        click.echo(f"error: {e.message}", err=True)
        sys.exit(e.code.exit_code)
    # The key alone on stdout (easy to capture); the rest on stderr for the human.
    click.echo(secret)
    scope = ", ".join(record.models) if record.models else "all models"
    expiry = record.to_public()["expires_at"] or "never"
    click.echo(f"created key {record.name!r} (id {record.id}; {scope}; expires {expiry})", err=True)
    click.echo("Store it now: this key will not be shown again.", err=True)


if __name__ == "__main__":
    main()
