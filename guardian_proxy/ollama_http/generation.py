"""/api/chat and /api/generate: validate, check capabilities, lease, relay and translate.

The pure work (validation, the llama-server request, the answer's translation) is in
`guardian_proxy.ollama`; this module does the I/O around it in the order Ollama does:
unload (keep_alive 0, nothing to do) → capability checks → load (nothing to do) → generate.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from aiohttp import web

from guardian_proxy.cache_isolation import isolating, without_reuse
from guardian_proxy.catalog import Entry
from guardian_proxy.context import ProxyContext, ctx_of
from guardian_proxy.loading import Progress, ollama_progress_line
from guardian_proxy.ollama import (
    ChatStreamTranslator,
    GeneratePlan,
    OllamaError,
    build_chat_request,
    build_generate_request,
    chat_load_response,
    error_line,
    generate_load_response,
    json_bytes,
    now_rfc3339,
    require_model,
    think_enabled,
    unsupported_capability,
)
from guardian_proxy.ollama.chat import PROMPT_TOO_LONG, drop_oldest_message, is_context_overflow
from guardian_proxy.ollama_http.common import NDJSON_HEADERS, api, json_response, read_body, resolve
from guardian_proxy.ollama_http.upstream import (
    check_status,
    load_only,
    open_upstream,
    post_json,
    read_json,
    relay_ndjson,
    unload,
)
from guardian_proxy.relay import UpstreamError, leased, write_quietly
from guardian_proxy.supervisor_link import Lease
from shared.errors import GuardianError


def check_capabilities(
    entry: Entry,
    model: str,
    endpoint: str,
    *,
    tools: bool = False,
    think: bool | str | None = None,
    images: bool = False,
    suffix: bool = False,
) -> None:
    """Ollama's 400s for asking a model what it cannot do, before anything is loaded."""
    caps = entry.capabilities
    if "completion" not in caps:
        raise unsupported_capability(model, endpoint)
    if tools and "tools" not in caps:  # `tools: []` does not count (ollama-python sends it)
        raise unsupported_capability(model, "tools")
    if suffix and "insert" not in caps:
        raise unsupported_capability(model, "insert")
    if images and "vision" not in caps:
        raise unsupported_capability(model, "vision")
    if think_enabled(think) and "thinking" not in caps:
        raise unsupported_capability(model, "thinking")


def _ns_since(t0: int) -> int:
    return time.perf_counter_ns() - t0


@api
async def chat(request: web.Request) -> web.StreamResponse:
    t0 = time.perf_counter_ns()
    body = await read_body(request)
    entry = await resolve(request, require_model(body, "chat"))
    plan = build_chat_request(body, n_ctx=entry.context)
    pc = ctx_of(request)
    if plan.action == "unload":
        await unload(pc, entry)
        return json_response(chat_load_response(plan.model, "unload"))
    check_capabilities(
        entry, plan.model, "chat", tools=plan.has_tools, think=plan.think, images=plan.has_images
    )
    num_ctx = plan.load_options.get("num_ctx")
    if plan.action == "load":
        await load_only(pc, entry, num_ctx, plan.keep_alive)
        return json_response(chat_load_response(plan.model, "load"))
    progress = None
    if plan.stream and pc.config.settings.proxy.loading_progress:
        progress = Progress(
            request, NDJSON_HEADERS, lambda text: ollama_progress_line(plan.model, text, now_rfc3339())
        )
    try:
        async with leased(
            pc.link, entry.name, ctx=num_ctx, keep_alive=plan.keep_alive, progress=progress
        ) as lease:
            body = without_reuse(plan.body) if isolating(request) else plan.body
            while True:
                async with open_upstream(
                    pc.session, lease, plan.endpoint, json_bytes(body), stream=plan.stream
                ) as up:
                    try:
                        await check_status(up)
                    except OllamaError as e:
                        if not is_context_overflow(e.message):
                            raise
                        shorter = drop_oldest_message(body["messages"]) if plan.truncate else None
                        if shorter is None:  # truncate:false, or only the last message (and system ones) left
                            raise OllamaError(400, f"{PROMPT_TOO_LONG} (llama-server: {e.message})") from None
                        # llama-server refuses an oversized prompt after tokenizing it, before any
                        # evaluation, so each try is cheap (Ollama renders and tokenizes per step too).
                        body = {**body, "messages": shorter}
                        continue
                    load_ns = int(lease.waited_s * 1e9)
                    if plan.stream:
                        t = plan.translator()

                        async def finish(
                            t: ChatStreamTranslator = t, load_ns: int = load_ns
                        ) -> list[dict[str, Any]]:
                            return t.finish(total_duration=_ns_since(t0), load_duration=load_ns)

                        return await relay_ndjson(
                            request, up, lease.model, t.feed, finish, progress.resp if progress else None
                        )
                    agg = plan.translator(emit=False)
                    agg.feed(await read_json(up))
                    return json_response(agg.result(total_duration=_ns_since(t0), load_duration=load_ns))
    except (OllamaError, GuardianError, UpstreamError) as e:
        if progress is None or progress.resp is None:
            raise  # nothing sent yet: @api answers with the status
        await write_quietly(progress.resp, error_line(getattr(e, "message", str(e))))  # the stream began
        await progress.resp.write_eof()
        return progress.resp


async def _prompt_text(pc: ProxyContext, lease: Lease, plan: GeneratePlan) -> str:
    if plan.prompt_text is not None:
        return plan.prompt_text
    assert plan.render_body is not None
    rendered = (await post_json(pc, lease, "/apply-template", plan.render_body)).get("prompt")
    if not isinstance(rendered, str):
        raise OllamaError(502, "llama-server's /apply-template answered without a prompt")
    return rendered


async def _context(pc: ProxyContext, lease: Lease, plan: GeneratePlan, output: str) -> list[int] | None:
    """The deprecated `context` (token ids of prompt + output); None when it cannot be had.

    Two small calls after the generation (/apply-template, /tokenize); a failure only drops
    the field, never the answer.
    """
    if not plan.wants_context:
        return None
    try:
        prompt = await _prompt_text(pc, lease, plan)
        tokens = (await post_json(pc, lease, "/tokenize", plan.tokenize_body(prompt, output))).get("tokens")
    except (OllamaError, UpstreamError, aiohttp.ClientError, TimeoutError):
        return None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        return None
    return plan.context_from_tokens(tokens)


@api
async def generate(request: web.Request) -> web.StreamResponse:
    t0 = time.perf_counter_ns()
    body = await read_body(request)
    entry = await resolve(request, require_model(body, "generate"))
    plan = build_generate_request(body, has_template=entry.has_template, n_ctx=entry.context)
    pc = ctx_of(request)
    if plan.action == "unload":
        await unload(pc, entry)
        return json_response(generate_load_response(plan.model, "unload"))
    check_capabilities(
        entry, plan.model, "generate", think=plan.think, images=plan.has_images, suffix=plan.has_suffix
    )
    num_ctx = plan.load_options.get("num_ctx")
    if plan.action == "load":
        await load_only(pc, entry, num_ctx, plan.keep_alive)
        return json_response(generate_load_response(plan.model, "load"))
    async with leased(pc.link, entry.name, ctx=num_ctx, keep_alive=plan.keep_alive) as lease:
        load_ns = int(lease.waited_s * 1e9)
        up_body = plan.body
        if plan.mode == "render":  # continue an old `context`: render the template first
            up_body = plan.completion_body(await _prompt_text(pc, lease, plan))
        if isolating(request):
            up_body = without_reuse(up_body)
        async with open_upstream(
            pc.session, lease, plan.endpoint, json_bytes(up_body), stream=plan.stream
        ) as up:
            await check_status(up)
            if plan.stream:
                t = plan.translator()

                async def finish() -> list[dict[str, Any]]:
                    context = await _context(pc, lease, plan, t.text) if t.finished else None
                    return t.finish(total_duration=_ns_since(t0), load_duration=load_ns, context=context)

                return await relay_ndjson(request, up, lease.model, t.feed, finish)
            agg = plan.translator(emit=False)
            agg.feed(await read_json(up))
        context = await _context(pc, lease, plan, agg.text) if agg.finished else None
        return json_response(agg.result(total_duration=_ns_since(t0), load_duration=load_ns, context=context))
