"""The proxy's aiohttp application and its lifecycle."""

from __future__ import annotations

import contextlib

import structlog
from aiohttp import web

from guardian_proxy import dashboard, ollama_http, openai_routes, sessions_routes
from guardian_proxy.auth import make_auth_middleware
from guardian_proxy.context import CTX_KEY, ProxyContext
from guardian_proxy.middleware import make_error_middleware
from guardian_proxy.request_limits import make_encoding_middleware
from guardian_proxy.supervisor_link import SupervisorLink
from shared.config import Config

log = structlog.get_logger("proxy")
OLLAMA_VERSION = "0.12.6"


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


def create_app(pc: ProxyContext) -> web.Application:
    max_body = int(pc.config.settings.proxy.max_body_mb * 2**20)
    middlewares = [
        ollama_http.make_cors_middleware(),  # first: preflights carry no key; refused origins stop here
        make_error_middleware(pc.config.settings.proxy.max_body_mb),
        make_encoding_middleware(),  # before the body is read (and inflated)
        make_auth_middleware(pc.keys, pc.auth_required),
    ]
    app = web.Application(client_max_size=max_body, middlewares=middlewares)
    app.on_response_prepare.append(ollama_http.on_prepare)  # CORS header on every answer
    app[CTX_KEY] = pc
    app.router.add_get("/", root)  # GET also answers HEAD
    openai_routes.add_routes(app, pc)
    sessions_routes.add_routes(app)  # /guardian/sessions: named KV-cache sessions
    ollama_http.add_routes(app, pc, OLLAMA_VERSION)
    return app


class ProxyServer:
    """guardian-proxy: the API on proxy.port; start/stop for the daemon runner."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = ProxyContext(config, SupervisorLink(config.socket_path))
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        await self.ctx.start()
        p = self.config.settings.proxy
        runner = web.AppRunner(create_app(self.ctx), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, p.host, p.port, backlog=1024).start()
        self._runners.append(runner)
        ui = web.AppRunner(dashboard.create_app(self.ctx), access_log=None)
        await ui.setup()
        await web.TCPSite(ui, p.ui_host, p.ui_port).start()
        self._runners.append(ui)
        log.info(
            "proxy_listening", url=f"http://{p.host}:{p.port}", dashboard=f"http://{p.ui_host}:{p.ui_port}"
        )

    async def stop(self) -> None:
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        await self.ctx.close()
        log.info("proxy_stopped")

    def kill_now(self) -> None:
        """The proxy owns no child processes: nothing to kill."""
