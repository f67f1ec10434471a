"""POST /v1/responses: the Responses API, translated onto the model's /v1/chat/completions.

The pure translation (and why it translates instead of relaying) is in
`guardian_proxy.responses_api`; this module does the I/O: read, lease, relay, and write
each upstream chunk's events the moment it arrives (nothing is buffered).
"""

from __future__ import annotations

import contextlib
import json

import aiohttp
import structlog
from aiohttp import web

from guardian_proxy import request_limits
from guardian_proxy.auth import check_model_scope
from guardian_proxy.cache_isolation import isolating, without_reuse
from guardian_proxy.client_stream import ClientStream
from guardian_proxy.context import ctx_of
from guardian_proxy.errors_http import openai_error, openai_from
from guardian_proxy.ollama_http.upstream import BROKEN_STREAM, sse_batches
from guardian_proxy.relay import STREAM_HEADERS, UpstreamError, leased, upstream, write_quietly
from guardian_proxy.responses_api import (
    ResponsesError,
    ResponsesStream,
    build_chat_request,
    response_from_chat,
)
from shared.errors import GuardianError

log = structlog.get_logger("proxy.responses")


def upstream_message(status: int, raw: bytes) -> str:
    """llama-server's error body ({"error": {"message"}} or text) as one line for the client."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message") or f"llama-server answered {status}")
    text = raw.decode(errors="replace").strip()
    return text[:500] or f"llama-server answered {status}"


async def responses(request: web.Request) -> web.StreamResponse:
    pc = ctx_of(request)
    try:
        payload = request_limits.loads(await request.read())
    except ValueError as e:
        return openai_error(400, f"request body is not valid JSON: {e}")
    if not isinstance(payload, dict):
        return openai_error(400, "request body must be a JSON object")
    try:
        plan = build_chat_request(payload)
    except ResponsesError as e:
        return openai_error(e.status, e.message, param=e.param)
    if problem := request_limits.too_many_messages(plan.body, pc.config.settings.proxy.max_messages):
        return openai_error(400, problem, param="input")
    if plan.dropped:
        # Codex sends hosted tools (web_search, image_generation) no local model can run.
        log.info("responses_dropped", model=plan.model, dropped=plan.dropped)
    check_model_scope(request, plan.model)
    body = without_reuse(plan.body) if isolating(request) else plan.body
    try:
        async with (
            leased(pc.link, plan.model) as lease,
            upstream(
                pc.session, lease, "/v1/chat/completions", json.dumps(body).encode(), stream=plan.stream
            ) as up,
        ):
            if up.status != 200:
                return openai_error(up.status, upstream_message(up.status, await up.read()))
            if plan.stream:
                return await _relay_events(
                    request, up, ResponsesStream(lease.model, plan.echo, plan.namespaces)
                )
            try:
                completion = json.loads(await up.read())
            except ValueError as e:
                return openai_error(502, f"llama-server sent an answer that is not JSON: {e}")
            return web.json_response(response_from_chat(completion, lease.model, plan.echo, plan.namespaces))
    except GuardianError as e:
        return openai_from(e)
    except UpstreamError as e:
        return openai_error(e.status, str(e))


async def _relay_events(
    request: web.Request, up: aiohttp.ClientResponse, t: ResponsesStream
) -> web.StreamResponse:
    """Chat SSE in, Responses SSE out, per network read. Once the status is sent, a failure
    becomes `error` + `response.failed` events (the SDK raises on them)."""
    resp = ClientStream(headers=STREAM_HEADERS)
    await resp.prepare(request)
    await resp.write(b"".join(t.start()))
    try:
        async for batch in sse_batches(up):
            events: list[bytes] = []
            for chunk in batch:
                events += t.feed(chunk)
            if events:
                await resp.write(b"".join(events))
        if t.finish_reason is None and not t.finished:
            events = t.fail(f"llama-server for '{t.model}' ended the stream before it finished")
        else:
            events = t.finish()
        await resp.write(b"".join(events))
    except BROKEN_STREAM as e:
        failed = t.fail(f"llama-server for '{t.model}' broke off the stream: {type(e).__name__}")
        await write_quietly(resp, b"".join(failed))
    with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionError):
        await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", responses)
