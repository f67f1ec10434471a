"""The model-management routes: /api/version, tags, show, ps, and pull/push/create/copy/delete/blobs.

Guardian's models are whatever models.yaml lists, so the routes that would change the set
answer as Ollama would where that is meaningful (pull of a configured model succeeds) and
otherwise explain, in Ollama's error shape, where models are managed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web

from guardian_proxy.catalog import Entry
from guardian_proxy.context import ctx_of
from guardian_proxy.ollama import OllamaError, format_rfc3339_nano, json_bytes, ndjson_line, require_model
from guardian_proxy.ollama.fields import get_bool
from guardian_proxy.ollama_http.common import (
    Handler,
    api,
    catalog_of,
    json_response,
    read_body,
    resolve,
    visible,
)
from shared.durations import parse_keep_alive

MIB = 2**20
FOREVER_S = (2**63 - 1) // 1_000_000_000  # Ollama's "forever": now + the largest Go duration
COPILOT_UA = "GitHubCopilotChat/"


def version_handler(version: str) -> Handler:
    body = json_bytes({"version": version})  # encoded once: clients poll it

    async def api_version(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    return api_version


# Ollama's GET /api/status (api.StatusResponse): whether cloud models are off and why. Guardian
# serves only the local models.yaml, so cloud is always off, by its configuration.
_STATUS = json_bytes({"cloud": {"disabled": True, "source": "config"}})


async def status(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_STATUS, content_type="application/json", charset="utf-8")


@api
async def tags(request: web.Request) -> web.StreamResponse:
    entries = await catalog_of(request).entries()
    models = [{**e.tag, "capabilities": list(e.capabilities)} for e in entries if visible(request, e)]
    return json_response({"models": models})


@api
async def show(request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    name = require_model(body, "show")  # `model`, or the older `name` (Continue sends it)
    verbose = get_bool(body, "verbose", "ShowRequest", False)
    entry = await resolve(request, name)
    answer = await ctx_of(request).link.call("catalog.show", {"model": entry.name, "verbose": verbose})
    out: dict[str, Any] = answer["show"]
    if request.headers.get("User-Agent", "").startswith(COPILOT_UA):
        info = out["model_info"]
        info["general.basename"] = name  # Copilot shows this as the model's name (as Ollama does)
        arch = info.get("general.architecture")
        if isinstance(arch, str):
            # Copilot budgets its prompts by this: the context Guardian runs, not the trained one.
            info[f"{arch}.context_length"] = answer["context"]
    return json_response(out)


def _expires_epoch(m: dict[str, Any], keep_alive_default: Any) -> float:
    expires = m.get("expires_at")
    if isinstance(expires, (int, float)):
        return float(expires)
    # No idle timer: loading, in use, pinned or kept forever.
    seconds = m.get("keep_alive_s")
    if seconds is None:
        try:
            seconds = parse_keep_alive(keep_alive_default)
        except ValueError:
            seconds = 300.0
    if m.get("pinned") or seconds < 0:
        return time.time() + FOREVER_S
    return time.time() + seconds


@api
async def ps(request: web.Request) -> web.StreamResponse:
    pc = ctx_of(request)
    status = await pc.link.call("models.status")
    entries = {e.name: e for e in await catalog_of(request).entries()}
    placements = (status.get("vram") or {}).get("placements") or {}
    default_keep = pc.config.settings.supervisor.keep_alive
    rows: list[tuple[float, dict[str, Any]]] = []
    for m in status["models"]:
        entry = entries.get(m["name"])
        if m["state"] not in ("READY", "STARTING") or entry is None or not visible(request, entry):
            continue
        cfg = pc.config.models.get(m["name"])
        keep = cfg.keep_alive if cfg is not None and cfg.keep_alive is not None else default_keep
        expires = _expires_epoch(m, keep)
        rows.append((expires, _ps_entry(entry, m, placements.get(m["name"]) or {}, expires)))
    rows.sort(key=lambda r: r[0], reverse=True)
    # Guardian's addition (clients ignore unknown keys): who waits for which model, loaded or not.
    queue = [
        {"model": entries[m["name"]].tag["name"], "queued": m["queued"], "oldest_wait_s": m["oldest_wait_s"]}
        for m in status["models"]
        if m.get("queued") and m["name"] in entries and visible(request, entries[m["name"]])
    ]
    return json_response({"models": [r[1] for r in rows], "queue": queue})


def _ps_entry(entry: Entry, m: dict[str, Any], place: dict[str, Any], expires: float) -> dict[str, Any]:
    vram = int(sum(place.get("per_gpu_mib", {}).values()) * MIB)
    resident = place.get("measured_mib") or place.get("estimate_mib")
    size = int(resident * MIB) if resident else int(entry.tag.get("size", 0))
    tag = entry.tag
    return {
        "name": tag["name"],
        "model": tag["model"],
        "size": max(size, vram),
        "digest": tag["digest"],
        "details": tag["details"],
        "expires_at": format_rfc3339_nano(int(expires * 1e9)),
        "size_vram": vram,
        "context_length": m.get("ctx") or entry.context,
        "queued": m.get("queued", 0),  # Guardian's: requests waiting for this model, and the oldest's wait
        "oldest_wait_s": m.get("oldest_wait_s", 0.0),
    }


class Management:
    """pull/push/create/copy/delete/blobs, worded with where models.yaml lives (wrap each in `api`)."""

    def __init__(self, models_yaml: Path) -> None:
        # The file's name, not its path: key holders need not learn where the server keeps it.
        self.where = f"the server's {models_yaml.name}"

    def _not_here(self, what: str, name: str) -> OllamaError:
        return OllamaError(
            400,
            f"Guardian does not {what}: its models are configured in {self.where}; "
            f"edit '{name}' there, then run: guardianctl reload",
        )

    async def _known(self, request: web.Request, name: str, quote: str = "'") -> Entry:
        try:
            return await resolve(request, name)
        except OllamaError as e:
            if e.status != 404:
                raise
            raise OllamaError(
                404,
                f"model {quote}{name}{quote} not found: Guardian serves only the models configured in "
                f"{self.where}; add it there (a path to its GGUF file), then run: guardianctl reload",
            ) from None

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        name = require_model(body, "pull")
        stream = get_bool(body, "stream", "PullRequest", True)
        await self._known(request, name)
        done = {"status": "success"}
        if not stream:
            return json_response(done)
        return web.Response(body=ndjson_line(done), content_type="application/x-ndjson")

    async def push(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        name = require_model(body, "push")
        entry = await self._known(request, name)
        raise self._not_here("push models to a registry", entry.name)

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        name = require_model(body, "create")
        raise self._not_here("create models", name)

    async def copy(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        source, dest = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not source or not isinstance(dest, str) or not dest:
            raise OllamaError(400, "source and destination are required")
        entry = await self._known(request, source, quote='"')
        raise OllamaError(
            400,
            f"Guardian does not copy models: to serve '{entry.name}' as '{dest}' too, add '{dest}' "
            f"to its aliases in {self.where}, then run: guardianctl reload",
        )

    async def delete(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        name = require_model(body, "delete")
        entry = await self._known(request, name)
        raise self._not_here("delete model files", entry.name)

    async def blob_head(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404)  # Guardian stores no blobs

    async def blob_post(self, request: web.Request) -> web.StreamResponse:
        raise OllamaError(
            400,
            f"Guardian does not accept model uploads: put the GGUF file on this machine and add it to "
            f"{self.where}, then run: guardianctl reload",
        )
