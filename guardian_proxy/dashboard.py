"""The dashboard on proxy.ui_port (127.0.0.1 by default): models, states, leases, at a glance."""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from guardian_proxy.context import CTX_KEY, ProxyContext, ctx_of
from guardian_proxy.host_check import make_host_middleware
from shared.errors import GuardianError


@aiohttp_jinja2.template("dashboard.html")
async def index(request: web.Request) -> dict[str, object]:
    try:
        status = await ctx_of(request).link.call("models.status")
        return {"status": status, "error": None}
    except GuardianError as e:
        return {"status": None, "error": e.message}


async def status_json(request: web.Request) -> web.Response:
    try:
        return web.json_response(await ctx_of(request).link.call("models.status"))
    except GuardianError as e:
        return web.json_response({"error": e.message}, status=e.code.http_status)


def create_app(pc: ProxyContext) -> web.Application:
    p = pc.config.settings.proxy
    host_check = make_host_middleware(p.ui_host, p.allowed_hosts)
    app = web.Application(middlewares=[host_check] if host_check else [])
    app[CTX_KEY] = pc
    # auto_reload off: otherwise jinja2 stats the template file on the loop at every render.
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("guardian_proxy", "templates"),
        autoescape=True,
        auto_reload=False,
    )
    app.router.add_get("/", index)
    app.router.add_get("/status.json", status_json)
    return app
