"""/api/embed and the legacy /api/embeddings, served by a model with `embeddings: true`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

from guardian_proxy.catalog import Entry
from guardian_proxy.context import ProxyContext, ctx_of
from guardian_proxy.ollama import (
    OllamaError,
    build_embed_request,
    build_legacy_embeddings_request,
    embed_response,
    legacy_embeddings_response,
)
from guardian_proxy.ollama.embed import EMBED_ENDPOINT
from guardian_proxy.ollama_http.common import api, json_response, read_body, resolve
from guardian_proxy.ollama_http.upstream import post_json
from guardian_proxy.relay import leased
from guardian_proxy.supervisor_link import Lease

# llama-server's answer to an input longer than one batch (it does not truncate by itself).
_TOO_LARGE = re.compile(r"too large to process.*batch size: (\d+)")


def _require_embeddings(entry: Entry, model: str) -> None:
    if not entry.embeddings:
        raise OllamaError(400, f"{json.dumps(model)} does not support embeddings")


async def _embeddings(
    pc: ProxyContext, lease: Lease, body: dict[str, Any], inputs: list[str], truncate: bool
) -> dict[str, Any]:
    """POST /v1/embeddings; an over-long input is cut to what fits (Ollama's `truncate: true`)
    by sending token ids instead, or refused with Ollama's message."""
    try:
        return await post_json(pc, lease, EMBED_ENDPOINT, body)
    except OllamaError as e:
        m = _TOO_LARGE.search(e.message)
        if m is None:
            raise
        if not truncate:
            raise OllamaError(400, "the input length exceeds the context length") from None
        limit = min(int(m.group(1)), lease.ctx or int(m.group(1)))
    answers = await asyncio.gather(
        *(post_json(pc, lease, "/tokenize", {"content": text, "add_special": True}) for text in inputs)
    )
    ids = [list(a.get("tokens") or [])[:limit] for a in answers]
    return await post_json(pc, lease, EMBED_ENDPOINT, {**body, "input": ids})


@api
async def embed(request: web.Request) -> web.StreamResponse:
    t0 = time.perf_counter_ns()
    body = await read_body(request)
    plan = build_embed_request(body)
    entry = await resolve(request, plan.model)
    _require_embeddings(entry, plan.model)
    pc = ctx_of(request)
    async with leased(
        pc.link, entry.name, ctx=plan.load_options.get("num_ctx"), keep_alive=plan.keep_alive
    ) as lease:
        answer = await _embeddings(pc, lease, plan.body, plan.inputs, plan.truncate) if plan.inputs else None
    return json_response(
        embed_response(
            answer,
            model=plan.model,
            dimensions=plan.dimensions,
            total_duration=time.perf_counter_ns() - t0,
            load_duration=int(lease.waited_s * 1e9),
        )
    )


@api
async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    plan = build_legacy_embeddings_request(body)
    entry = await resolve(request, plan.model)
    _require_embeddings(entry, plan.model)
    pc = ctx_of(request)
    async with leased(
        pc.link, entry.name, ctx=plan.load_options.get("num_ctx"), keep_alive=plan.keep_alive
    ) as lease:
        answer = await _embeddings(pc, lease, plan.body, [plan.prompt], True) if plan.prompt else None
    return json_response(legacy_embeddings_response(answer))
