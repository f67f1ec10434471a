"""llama-server's own routes, relayed to the server of the model the body's `model` names.

/tokenize, /detokenize, /apply-template, /infill (llama.vscode's fill-in-the-middle) and the
reranker (/v1/rerank, /rerank, /v1/reranking) pass through as they are, with the same auth,
key scopes and leases as every other route. Reranking is refused before anything loads when
the model is not configured for it, or runs on ik_llama.cpp, which has no reranking endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from guardian_proxy.auth import check_model_scope
from guardian_proxy.catalog import Entry
from guardian_proxy.context import ctx_of
from guardian_proxy.errors_http import openai_error, openai_from
from guardian_proxy.openai_routes import read_json
from guardian_proxy.relay import UpstreamError, leased, pipe, upstream
from shared.errors import GuardianError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RERANK_PATHS = ("/v1/rerank", "/rerank", "/v1/reranking")
PLAIN_PATHS = ("/tokenize", "/detokenize", "/apply-template", "/infill")


def rerank_refusal(entry: Entry) -> str | None:
    """Why `entry` cannot rerank, or None when it can."""
    if not entry.reranking:
        return (
            f"model '{entry.name}' is not a reranker: set 'reranking: true' for it in models.yaml "
            "(a reranking model such as bge-reranker; llama-server then runs it with --rerank)"
        )
    if entry.flavor == "ik":
        return (
            f"model '{entry.name}' runs on ik_llama.cpp, which has no reranking endpoint: "
            "give it an upstream llama.cpp backend in models.yaml (backend: official)"
        )
    return None


def make_handler(path: str, upstream_path: str, rerank: bool = False) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        parsed = await read_json(request)
        if isinstance(parsed, web.Response):
            return parsed
        body, payload = parsed
        pc = ctx_of(request)
        check_model_scope(request, payload["model"])
        try:
            entry = await pc.catalog.find(payload["model"])
            if entry is None:
                return openai_error(404, f"model '{payload['model']}' not found", "model_not_found", "model")
            if rerank and (why := rerank_refusal(entry)):
                return openai_error(400, why, "model_not_reranker", "model")
            async with (
                leased(pc.link, entry.name) as lease,
                upstream(pc.session, lease, upstream_path, body, stream=payload.get("stream") is True) as up,
            ):
                return await pipe(request, up, lease.model)
        except GuardianError as e:
            return openai_from(e)
        except UpstreamError as e:
            return openai_error(e.status, str(e))

    handler.__name__ = "relay_" + path.strip("/").replace("/", "_").replace("-", "_")
    return handler


def add_routes(app: web.Application) -> None:
    for path in PLAIN_PATHS:
        app.router.add_post(path, make_handler(path, path))
    for path in RERANK_PATHS:
        # One upstream path for all three spellings: llama-server serves each of them.
        app.router.add_post(path, make_handler(path, "/v1/rerank", rerank=True))
