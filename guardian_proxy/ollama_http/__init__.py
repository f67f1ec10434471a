"""The Ollama API routes (/api/*): HTTP around the pure translation in `guardian_proxy.ollama`.

`add_routes` registers them; `make_cors_middleware` + `cors.on_prepare` give Ollama's CORS.
"""

from __future__ import annotations

from aiohttp import web

from guardian_proxy.context import ProxyContext
from guardian_proxy.ollama_http import embed, generation, models
from guardian_proxy.ollama_http.common import api
from guardian_proxy.ollama_http.cors import make_cors_middleware, on_prepare

__all__ = ["add_routes", "make_cors_middleware", "on_prepare"]


def add_routes(app: web.Application, pc: ProxyContext, version: str) -> None:
    mgmt = models.Management(pc.config.config_dir / "models.yaml")
    r = app.router
    r.add_get("/api/version", models.version_handler(version))  # GET also answers HEAD
    r.add_get("/api/status", models.status)
    r.add_get("/api/tags", models.tags)
    r.add_get("/api/ps", models.ps)
    r.add_post("/api/show", models.show)
    r.add_post("/api/chat", generation.chat)
    r.add_post("/api/generate", generation.generate)
    r.add_post("/api/embed", embed.embed)
    r.add_post("/api/embeddings", embed.embeddings)
    r.add_post("/api/pull", api(mgmt.pull))
    r.add_post("/api/push", api(mgmt.push))
    r.add_post("/api/create", api(mgmt.create))
    r.add_post("/api/copy", api(mgmt.copy))
    r.add_delete("/api/delete", api(mgmt.delete))
    r.add_route("HEAD", "/api/blobs/{digest}", mgmt.blob_head)
    r.add_post("/api/blobs/{digest}", api(mgmt.blob_post))
