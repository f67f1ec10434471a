"""/guardian/sessions: named KV-cache sessions over HTTP, relayed to the supervisor's sessions.*.

Behind the same auth middleware as the API; a key limited to some models sees and touches only
their sessions. Errors are `{"error": "..."}` with the status of the supervisor's error code.

  GET    /guardian/sessions                 {"sessions": [...]}   (?model=M, ?carry=1)
  POST   /guardian/sessions                 {name, model, slot?}  → 201, the saved session
  GET    /guardian/sessions/{name}          the session
  POST   /guardian/sessions/{name}/restore  {model?, slot?} (body optional) → what was restored
  DELETE /guardian/sessions/{name}          {"deleted": name, "model": M}
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from guardian_proxy import request_limits
from guardian_proxy.auth import allowed_models, check_model_scope, get_api_key
from guardian_proxy.context import ctx_of
from guardian_proxy.ollama import OllamaError
from guardian_proxy.ollama_http.common import api

PREFIX = "/guardian/sessions"


async def _body(request: web.Request, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        payload = request_limits.loads(raw)
    except ValueError as e:
        raise OllamaError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise OllamaError(400, "request body must be a JSON object")
    return payload


def _owner(request: web.Request) -> dict[str, Any]:
    """Sessions belong to the key that saved them: a key sees and touches only its own (404
    for the rest). Without auth there is no owner; guardianctl (admin) sees all."""
    record = get_api_key(request)
    return {"owner": record.id} if record is not None else {}


async def _session(request: web.Request, name: str) -> dict[str, Any]:
    """The session NAME, if the caller's key owns it and may use its model (404 otherwise)."""
    info: dict[str, Any] = await ctx_of(request).link.call("sessions.info", {"name": name, **_owner(request)})
    check_model_scope(request, info["model"])
    return info


@api
async def list_sessions(request: web.Request) -> web.Response:
    params: dict[str, Any] = {"carry": request.query.get("carry") in ("1", "true", "yes")}
    if request.query.get("model"):
        params["model"] = request.query["model"]
    rows = await ctx_of(request).link.call("sessions.list", {**params, **_owner(request)})
    allowed = set(allowed_models(request, {r["model"] for r in rows}))
    return web.json_response({"sessions": [r for r in rows if r["model"] in allowed]})


@api
async def save(request: web.Request) -> web.Response:
    body = await _body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OllamaError(400, "'model' is required: the loaded model whose conversation to save")
    check_model_scope(request, model)
    params: dict[str, Any] = {k: body[k] for k in ("name", "model", "slot") if k in body}
    params.update(_owner(request))
    return web.json_response(await ctx_of(request).link.call("sessions.save", params), status=201)


@api
async def get_session(request: web.Request) -> web.Response:
    return web.json_response(await _session(request, request.match_info["name"]))


@api
async def restore(request: web.Request) -> web.Response:
    body = await _body(request, optional=True)
    name = request.match_info["name"]
    await _session(request, name)
    params: dict[str, Any] = {"name": name, **{k: body[k] for k in ("model", "slot") if k in body}}
    params.update(_owner(request))
    return web.json_response(await ctx_of(request).link.call("sessions.restore", params))


@api
async def delete(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await _session(request, name)
    return web.json_response(
        await ctx_of(request).link.call("sessions.delete", {"name": name, **_owner(request)})
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX, list_sessions)
    app.router.add_post(PREFIX, save)
    app.router.add_get(PREFIX + "/{name}", get_session)
    app.router.add_post(PREFIX + "/{name}/restore", restore)
    app.router.add_delete(PREFIX + "/{name}", delete)
