"""CORS as Ollama does it (gin-contrib/cors with envconfig.AllowedOrigins).

Allowed: localhost, 127.0.0.1 and 0.0.0.0 (http/https, any port), app://, file://, tauri://,
vscode-webview://, plus OLLAMA_ORIGINS (comma-separated, `*` wildcards). A request from any
other origin is refused with 403, as Ollama refuses it; requests without Origin (every
non-browser client) and same-origin requests pass untouched. Preflights are answered here,
so this middleware must run before authentication (a browser sends no key on OPTIONS).
"""

from __future__ import annotations

import fnmatch
import os
import re

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from guardian_proxy.errors_http import api_error

_DEFAULT = [
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for scheme in ("http", "https")
    for port in ("", ":*")
] + ["app://*", "file://*", "tauri://*", "vscode-webview://*"]

_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
_HEADERS = ", ".join(
    [
        "Authorization",
        "Content-Type",
        "User-Agent",
        "Accept",
        "X-Requested-With",
        "X-Api-Key",
        "OpenAI-Beta",
        "x-stainless-arch",
        "x-stainless-async",
        "x-stainless-custom-poll-interval",
        "x-stainless-helper-method",
        "x-stainless-lang",
        "x-stainless-package-version",
        "x-stainless-poll-helper",
        "x-stainless-retry-count",
        "x-stainless-runtime",
        "x-stainless-runtime-version",
        "x-stainless-timeout",
    ]
)
_MAX_AGE = str(12 * 3600)


def allowed_origins(env: str | None = None) -> re.Pattern[str]:
    """One compiled pattern for the default origins plus OLLAMA_ORIGINS."""
    extra = os.environ.get("OLLAMA_ORIGINS", "") if env is None else env
    patterns = [o.strip() for o in extra.split(",") if o.strip()] + _DEFAULT
    if "*" in patterns:
        return re.compile(".*", re.DOTALL)
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


_ORIGIN: web.RequestKey[str] = web.RequestKey("cors_origin", str)


def make_cors_middleware(origins: re.Pattern[str] | None = None) -> Middleware:
    """The middleware; pair it with `on_prepare` in app.on_response_prepare, which adds the
    Access-Control-Allow-Origin header to every answer (streamed and raised ones included)."""
    allowed = origins or allowed_origins()

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not origin or origin in (f"http://{request.host}", f"https://{request.host}"):
            return await handler(request)  # not a browser, or same origin: not a CORS request
        if not allowed.fullmatch(origin):
            message = f"origin {origin} is not allowed (set OLLAMA_ORIGINS to allow it)"
            return api_error(request, 403, message)
        request[_ORIGIN] = origin
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": _METHODS,
                    "Access-Control-Allow-Headers": _HEADERS,
                    "Access-Control-Max-Age": _MAX_AGE,
                },
            )
        return await handler(request)

    return cors_middleware


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.get(_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
