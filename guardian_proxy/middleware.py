"""Errors aiohttp raises itself (404, 405, 413, ...) answered as JSON in the API's own shape."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from guardian_proxy.errors_http import api_error


def make_error_middleware(max_body_mb: float) -> Middleware:
    @web.middleware
    async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400 or e.content_type == "application/json":
                raise  # redirects, and errors already in an API's shape (e.g. a key's scope)
            if e.status == 404:
                message = f"404 page not found: no route for {request.method} {request.path}"
            elif e.status == 405:
                message = f"method {request.method} is not allowed on {request.path}"
            elif e.status == 413:
                message = f"request body is larger than the {max_body_mb:g} MiB limit (proxy.max_body_mb in settings.yaml)"
            else:
                message = e.text or e.reason
            return api_error(request, e.status, message)

    return api_errors
