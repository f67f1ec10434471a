"""The OpenAI-compatible /v1 routes: relayed to the model's llama-server as they are."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from guardian_proxy import openai_chat, request_limits, validate
from guardian_proxy.auth import allowed_models, check_model_scope
from guardian_proxy.cache_isolation import isolating, without_reuse
from guardian_proxy.context import ProxyContext, ctx_of
from guardian_proxy.errors_http import openai_error, openai_from
from guardian_proxy.loading import Progress, openai_progress_chunk
from guardian_proxy.relay import (
    STREAM_HEADERS,
    UpstreamError,
    leased,
    pipe,
    sse_error_event,
    upstream,
    write_quietly,
)
from shared.errors import GuardianError


async def read_json(request: web.Request) -> tuple[bytes, dict[str, Any]] | web.Response:
    body = await request.read()
    try:
        payload = request_limits.loads(body)
    except ValueError as e:
        return openai_error(400, f"request body is not valid JSON: {e}")
    if not isinstance(payload, dict):
        return openai_error(400, "request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return openai_error(
            400, "'model' is required: name one of the models listed at /v1/models", param="model"
        )
    if problem := request_limits.too_many_messages(
        payload, ctx_of(request).config.settings.proxy.max_messages
    ):
        return openai_error(400, problem, param="messages")
    return body, payload


def make_relay(path: str, check: Callable[[dict[str, Any]], str | None]) -> Any:
    embeddings = path == "/v1/embeddings"
    chat = path == "/v1/chat/completions"

    async def handler(request: web.Request) -> web.StreamResponse:
        parsed = await read_json(request)
        if isinstance(parsed, web.Response):
            return parsed
        body, payload = parsed
        if (problem := check(payload)) is not None:
            return openai_error(400, problem)
        if chat:
            try:
                mapped = openai_chat.apply_reasoning(payload)
            except ValueError as e:
                return openai_error(400, str(e), param="reasoning_effort")
            if mapped is not None:
                payload = mapped
                body = json.dumps(payload).encode()
        pc = ctx_of(request)
        check_model_scope(request, payload["model"])
        if embeddings and (refusal := await _embeddings_refusal(pc, payload["model"])):
            return refusal
        if not embeddings and isolating(request):
            body = json.dumps(without_reuse(payload)).encode()
        stream = payload.get("stream") is True
        progress = None
        if chat and stream and pc.config.settings.proxy.loading_progress:
            model = payload["model"]
            progress = Progress(request, STREAM_HEADERS, lambda text: openai_progress_chunk(model, text))
        try:
            async with (
                leased(pc.link, payload["model"], progress=progress) as lease,
                upstream(pc.session, lease, path, body, stream=stream) as up,
            ):
                filters: dict[str, Any] = (
                    {"body_filter": openai_chat.rewrite_body, "stream_filter": openai_chat.SseUsageRewriter()}
                    if chat
                    else {}
                )
                return await pipe(request, up, lease.model, progress.resp if progress else None, **filters)
        except (GuardianError, UpstreamError) as e:
            if progress is not None and progress.resp is not None:  # the stream has begun
                status = e.code.http_status if isinstance(e, GuardianError) else e.status
                await write_quietly(progress.resp, sse_error_event(str(getattr(e, "message", e)), status))
                await progress.resp.write_eof()
                return progress.resp
            if isinstance(e, GuardianError):
                return openai_from(e)
            return openai_error(e.status, str(e))

    handler.__name__ = "relay_" + path.strip("/").replace("/", "_")
    return handler


async def _embeddings_refusal(pc: ProxyContext, name: str) -> web.Response | None:
    """400 before loading anything when the model does not run with --embeddings."""
    try:
        entry = await pc.catalog.find(name)
    except GuardianError as e:
        return openai_from(e)
    if entry is not None and not entry.embeddings:
        return openai_error(
            400,
            f"model '{entry.name}' does not serve embeddings: set 'embeddings: true' for it in models.yaml",
            "model_not_embedding",
            "model",
        )
    return None


async def list_models(request: web.Request) -> web.Response:
    pc = ctx_of(request)
    try:
        models = await pc.link.models()
    except GuardianError as e:
        return openai_from(e)
    allowed = set(allowed_models(request, [m["name"] for m in models]))
    data = [_model_obj(m) for m in models if m["name"] in allowed]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    pc = ctx_of(request)
    name = request.match_info["model"]
    try:
        models = await pc.link.models()
    except GuardianError as e:
        return openai_from(e)
    for m in models:
        if name in (m["name"], m["canonical"], *m["aliases"]) and allowed_models(request, [m["name"]]):
            return web.json_response(_model_obj(m))
    return openai_error(404, f"The model '{name}' does not exist", "model_not_found", "model")


def _model_obj(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": m["name"],
        "object": "model",
        "created": 0,
        "owned_by": "guardian",
        "meta": {"context": m["context"], "state": m["state"]},
    }


def add_routes(app: web.Application, pc: ProxyContext) -> None:
    app.router.add_post("/v1/chat/completions", make_relay("/v1/chat/completions", validate.check_chat))
    app.router.add_post("/v1/completions", make_relay("/v1/completions", validate.check_completion))
    app.router.add_post("/v1/embeddings", make_relay("/v1/embeddings", validate.check_embeddings))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
