"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages API (Claude Code).

HTTP around the pure translation in `guardian_proxy.anthropic_api`: parse, lease the model,
send the chat completion to its llama-server, and translate the answer; a stream is
translated read by read as it arrives (never buffered). Errors before the answer starts get
their status in Anthropic's shape; after, an `error` event ends the stream.
`?beta=true` (the SDK's beta client) changes nothing here.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from guardian_proxy import request_limits
from guardian_proxy.anthropic_api import (
    AnthropicError,
    MessageStream,
    build_chat_body,
    message_from_openai,
    sse_event,
)
from guardian_proxy.anthropic_api.errors import error_body
from guardian_proxy.anthropic_api.request import CHAT_ENDPOINT, MessagesPlan
from guardian_proxy.auth import check_model_scope
from guardian_proxy.cache_isolation import isolating, without_reuse
from guardian_proxy.client_stream import ClientStream
from guardian_proxy.context import ProxyContext, ctx_of
from guardian_proxy.errors_http import anthropic_error
from guardian_proxy.loading import Progress
from guardian_proxy.ollama_http.upstream import BROKEN_STREAM, sse_batches
from guardian_proxy.relay import (
    STREAM_HEADERS,
    UpstreamError,
    leased,
    upstream,
    upstream_error_message,
    write_quietly,
)
from guardian_proxy.supervisor_link import Lease
from shared.errors import GuardianError

log = structlog.get_logger("proxy.anthropic")


async def _plan(request: web.Request, *, count_only: bool) -> MessagesPlan:
    raw = await request.read()
    try:
        body = request_limits.loads(raw)
    except ValueError as e:
        raise AnthropicError(400, f"request body is not valid JSON: {e}") from None
    plan = build_chat_body(body, count_only=count_only)
    if problem := request_limits.too_many_messages(
        plan.body, ctx_of(request).config.settings.proxy.max_messages
    ):
        raise AnthropicError(400, problem)
    check_model_scope(request, plan.model)
    if plan.dropped_tools:
        log.info(
            "anthropic_tools_dropped",
            model=plan.model,
            tools=plan.dropped_tools,
            why="server tools run at Anthropic",
        )
    return plan


def _upstream_failure(status: int, raw: bytes) -> AnthropicError:
    """llama-server's error answer with its status."""
    return AnthropicError(status if 400 <= status <= 599 else 502, upstream_error_message(raw, status))


async def _post_json(pc: ProxyContext, lease: Lease, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with upstream(pc.session, lease, path, json.dumps(body).encode()) as up:
        raw = await up.read()
        if up.status != 200:
            raise _upstream_failure(up.status, raw)
        try:
            answer = json.loads(raw)
        except ValueError as e:
            raise AnthropicError(502, f"llama-server sent an answer that is not JSON: {e}") from None
        if not isinstance(answer, dict):
            raise AnthropicError(502, "llama-server sent an answer that is not a JSON object")
        return answer


def _errors_as_anthropic(fn: Any) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await fn(request)
            return resp
        except AnthropicError as e:
            return anthropic_error(e.status, e.message)
        except GuardianError as e:
            return anthropic_error(e.code.http_status, e.message, e.code.retry_after)
        except UpstreamError as e:
            return anthropic_error(e.status, str(e))

    handler.__name__ = fn.__name__
    return handler


async def _relay_stream(
    request: web.Request,
    up: aiohttp.ClientResponse,
    model: str,
    translator: MessageStream,
    resp: web.StreamResponse | None,
) -> web.StreamResponse:
    """`resp` given: loading progress already began the message (and its thinking block)."""
    if resp is None:
        resp = ClientStream(headers=STREAM_HEADERS)
        await resp.prepare(request)
        await resp.write(b"".join(sse_event(n, d) for n, d in translator.start()))
    try:
        async for chunks in sse_batches(up):
            events = [e for c in chunks for e in translator.feed(c)]
            if events:
                await resp.write(b"".join(sse_event(n, d) for n, d in events))
        await resp.write(b"".join(sse_event(n, d) for n, d in translator.finish()))
    except AnthropicError as e:
        await write_quietly(resp, sse_event("error", error_body(e.status, e.message)))
    except BROKEN_STREAM as e:
        message = f"llama-server for '{model}' broke off the stream: {type(e).__name__}"
        await write_quietly(resp, sse_event("error", error_body(502, message)))
    with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionError):
        await resp.write_eof()
    return resp


def _progress(request: web.Request, translator: MessageStream) -> Progress:
    """Loading ticks as thinking deltas of the message the answer then continues."""
    sent = [False]

    def render(text: str) -> bytes:
        first, sent[0] = not sent[0], True
        return b"".join(sse_event(n, d) for n, d in translator.progress(text, first))

    return Progress(request, STREAM_HEADERS, render)


@_errors_as_anthropic
async def messages(request: web.Request) -> web.StreamResponse:
    plan = await _plan(request, count_only=False)
    pc = ctx_of(request)
    body = without_reuse(plan.body) if isolating(request) else plan.body
    translator = MessageStream(plan.model)
    progress = (
        _progress(request, translator) if plan.stream and pc.config.settings.proxy.loading_progress else None
    )
    try:
        async with (
            leased(pc.link, plan.model, progress=progress) as lease,
            upstream(pc.session, lease, CHAT_ENDPOINT, json.dumps(body).encode(), stream=plan.stream) as up,
        ):
            if up.status != 200:
                raise _upstream_failure(up.status, await up.read())
            if plan.stream:
                return await _relay_stream(
                    request, up, plan.model, translator, progress.resp if progress else None
                )
            try:
                answer = json.loads(await up.read())
            except ValueError as e:
                raise AnthropicError(502, f"llama-server sent an answer that is not JSON: {e}") from None
            return web.json_response(message_from_openai(answer, plan.model))
    except (AnthropicError, GuardianError, UpstreamError) as e:
        if progress is None or progress.resp is None:
            raise  # nothing sent yet: answered with the status, in Anthropic's shape
        status = e.status if isinstance(e, AnthropicError | UpstreamError) else e.code.http_status
        await write_quietly(
            progress.resp, sse_event("error", error_body(status, getattr(e, "message", str(e))))
        )
        with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionError):
            await progress.resp.write_eof()
        return progress.resp


@_errors_as_anthropic
async def count_tokens(request: web.Request) -> web.StreamResponse:
    """The prompt as the model's template renders it (/apply-template), tokenized (/tokenize)."""
    plan = await _plan(request, count_only=True)
    pc = ctx_of(request)
    async with leased(pc.link, plan.model) as lease:
        prompt = (await _post_json(pc, lease, "/apply-template", plan.body)).get("prompt")
        if not isinstance(prompt, str):
            raise AnthropicError(502, "llama-server's /apply-template answered without a prompt")
        # Tokenized as llama-server tokenizes a chat prompt: BOS added where the vocab wants it.
        tokens = (await _post_json(pc, lease, "/tokenize", {"content": prompt, "add_special": True})).get(
            "tokens"
        )
    if not isinstance(tokens, list):
        raise AnthropicError(502, "llama-server's /tokenize answered without tokens")
    return web.json_response({"input_tokens": len(tokens)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
