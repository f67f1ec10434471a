"""The dashboard on proxy.ui_port (127.0.0.1 by default): live over SSE, no page reloads.

GET /            the page, server-rendered (aiohttp-jinja2) with the state at that moment
GET /events      text/event-stream: one `state` event per second (models, memory, queue,
                 recent requests, log tails, benchmark progress, records, optimizer choices)
GET /state.json  the same state once; /status.json: models.status as it is
POST /api/models/{model}/{load|unload|pin|unpin}   admin actions: need a key allowed to use the model

Viewing needs no key (the port is local by default); acting does, whether or not the API
requires keys, because a page anyone on the box can open must not stop models on a click.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from guardian_proxy.auth import presented_key
from guardian_proxy.client_stream import ClientStream
from guardian_proxy.context import CTX_KEY, ProxyContext, ctx_of
from guardian_proxy.host_check import make_host_middleware
from shared.errors import GuardianError

log = structlog.get_logger("dashboard")
STATIC = Path(__file__).parent / "static"
TICK_S = 1.0
ACTIONS = ("load", "unload", "pin", "unpin")
CLOSING = web.AppKey("dashboard_closing", asyncio.Event)  # set on shutdown: event streams end


async def _optional(pc: ProxyContext, method: str, params: dict[str, Any] | None = None) -> Any:
    """A panel whose RPC fails shows nothing; the models table still comes."""
    try:
        return await pc.link.call(method, params)
    except GuardianError:
        return None


async def gather_state(pc: ProxyContext) -> dict[str, Any]:
    """Everything the page shows, from the supervisor (RPC) and the proxy's own figures."""
    status, bench, records, optimizer = await asyncio.gather(
        pc.link.call("models.status"),
        _optional(pc, "bench.status"),
        _optional(pc, "bench.records", {"limit": 10}),
        _optional(pc, "optimizer.show"),
    )
    for m in status["models"]:
        m.pop("argv", None)  # long, and the page does not need it
    return {
        "status": status,
        "bench": bench,
        "records": records,
        "optimizer": optimizer,
        "recent": [f.to_dict() for f in reversed(pc.metrics.recent)][:20],
    }


@aiohttp_jinja2.template("dashboard.html")
async def index(request: web.Request) -> dict[str, object]:
    try:
        state = await gather_state(ctx_of(request))
        return {"state": state, "state_json": json.dumps(state), "error": None}
    except GuardianError as e:
        return {"state": None, "state_json": "null", "error": e.message}


async def status_json(request: web.Request) -> web.Response:
    try:
        return web.json_response(await ctx_of(request).link.call("models.status"))
    except GuardianError as e:
        return web.json_response({"error": e.message}, status=e.code.http_status)


async def state_json(request: web.Request) -> web.Response:
    try:
        return web.json_response(await gather_state(ctx_of(request)))
    except GuardianError as e:
        return web.json_response({"error": e.message}, status=e.code.http_status)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the state every TICK_S until the browser goes away."""
    pc = ctx_of(request)
    resp = ClientStream(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    last = b""
    try:
        while True:
            try:
                data = json.dumps(await gather_state(pc)).encode()
            except GuardianError as e:
                data = json.dumps({"error": e.message}).encode()
            if data != last:  # unchanged state: a comment keeps the connection alive, no redraw
                await resp.write(b"event: state\ndata: " + data + b"\n\n")
                last = data
            else:
                await resp.write(b": tick\n\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.app[CLOSING].wait(), TICK_S)
            if request.app[CLOSING].is_set():
                break
    except ConnectionError:
        pass  # the browser went away
    return resp


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def action(request: web.Request) -> web.Response:
    """Load, unload, pin or unpin a model; the key must be valid and allowed to use it."""
    pc = ctx_of(request)
    model, what = request.match_info["model"], request.match_info["action"]
    if what not in ACTIONS:
        return _refuse(404, f"no action {what!r}: use one of {', '.join(ACTIONS)}")
    secret = presented_key(request)
    if secret is None:
        return _refuse(401, "admin actions need an API key: enter one (guardianctl keys create NAME)")
    await pc.keys.maybe_refresh()
    record, reason = pc.keys.check(secret)
    if record is None:
        return _refuse(401, f"API key refused ({reason}); create one with: guardianctl keys create NAME")
    if not record.allows(model):
        return _refuse(403, f"this key may not use model '{model}'")
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "load": ("models.load", {"model": model}),
        "unload": ("models.unload", {"model": model}),
        "pin": ("models.pin", {"model": model, "pinned": True}),
        "unpin": ("models.pin", {"model": model, "pinned": False}),
    }
    method, params = calls[what]
    log.info("dashboard_action", action=what, model=model, key=record.name)
    if what == "load":  # answer at once: the page shows the load happening
        task = asyncio.create_task(pc.link.call(method, params))
        _background.add(task)
        task.add_done_callback(_done)
        return web.json_response({"ok": True, "action": what, "model": model}, status=202)
    try:
        result = await pc.link.call(method, params)
    except GuardianError as e:
        return _refuse(e.code.http_status, e.message)
    return web.json_response({"ok": True, "action": what, "model": model, "result": result})


_background: set[asyncio.Task[Any]] = set()


def _done(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and (e := task.exception()) is not None:
        log.warning("dashboard_load_failed", error=str(e))


async def _cancel_background(app: web.Application) -> None:
    app[CLOSING].set()
    for task in list(_background):
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.gather(*_background, return_exceptions=True)


def create_app(pc: ProxyContext) -> web.Application:
    p = pc.config.settings.proxy
    host_check = make_host_middleware(p.ui_host, p.allowed_hosts)
    app = web.Application(middlewares=[host_check] if host_check else [])
    app[CTX_KEY] = pc
    app[CLOSING] = asyncio.Event()
    # auto_reload off: otherwise jinja2 stats the template file on the loop at every render.
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("guardian_proxy", "templates"),
        autoescape=True,
        auto_reload=False,
    )
    env.filters["mib"] = lambda v: f"{v:,.0f} MiB" if isinstance(v, int | float) else "-"
    app.router.add_get("/", index)
    app.router.add_get("/status.json", status_json)
    app.router.add_get("/state.json", state_json)
    app.router.add_get("/events", events)
    app.router.add_post("/api/models/{model}/{action}", action)
    app.router.add_static("/static", STATIC)
    app.on_shutdown.append(_cancel_background)
    return app
