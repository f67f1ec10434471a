"""The proxy's aiohttp application and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from guardian_proxy import (
    anthropic_http,
    dashboard,
    llama_routes,
    ollama_http,
    openai_routes,
    responses_http,
    sessions_routes,
)
from guardian_proxy.auth import make_auth_middleware
from guardian_proxy.client_stream import WRITE_TIMEOUT_KEY
from guardian_proxy.context import CTX_KEY, ProxyContext
from guardian_proxy.errors_http import api_error
from guardian_proxy.host_check import make_host_middleware
from guardian_proxy.metrics import make_metrics_middleware, metrics_handler
from guardian_proxy.middleware import make_error_middleware
from guardian_proxy.request_limits import make_encoding_middleware
from guardian_proxy.supervisor_link import SupervisorLink
from shared import conn_guard
from shared.config import Config

log = structlog.get_logger("proxy")


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


def create_app(pc: ProxyContext) -> web.Application:
    max_body = int(pc.config.settings.proxy.max_body_mb * 2**20)
    middlewares = [
        make_metrics_middleware(pc.metrics),  # outermost: sees every answer's final status
        ollama_http.make_cors_middleware(),  # first: preflights carry no key; refused origins stop here
        make_error_middleware(pc.config.settings.proxy.max_body_mb),
        make_encoding_middleware(),  # before the body is read (and inflated)
        make_auth_middleware(pc.keys, pc.auth_required),
        conn_guard.body_timeout_middleware(pc.config.settings.proxy.body_timeout_s, api_error),
    ]
    if host_check := make_host_middleware(
        pc.config.settings.proxy.host, pc.config.settings.proxy.allowed_hosts
    ):
        middlewares.insert(0, host_check)  # first: a rebound page gets nothing, not even CORS
    app = web.Application(client_max_size=max_body, middlewares=middlewares)
    app.on_response_prepare.append(ollama_http.on_prepare)  # CORS header on every answer
    app[CTX_KEY] = pc
    app[WRITE_TIMEOUT_KEY] = pc.config.settings.proxy.write_timeout_s
    app.router.add_get("/", root)  # GET also answers HEAD
    app.router.add_get("/metrics", metrics_handler)  # Prometheus; behind the same keys
    openai_routes.add_routes(app, pc)
    responses_http.add_routes(app)  # /v1/responses, translated onto chat completions
    llama_routes.add_routes(app)  # /tokenize, /infill, /v1/rerank, ...: relayed as they are
    anthropic_http.add_routes(app)  # /v1/messages: the Anthropic Messages API
    sessions_routes.add_routes(app)  # /guardian/sessions: named KV-cache sessions
    ollama_http.add_routes(app, pc, pc.config.settings.proxy.ollama_version)
    return app


class ProxyServer:
    """guardian-proxy: the API on proxy.port; start/stop for the daemon runner."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = ProxyContext(config, SupervisorLink(config.socket_path))
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.Server] = []
        self.guards: list[conn_guard.GuardedFactory] = []

    async def start(self) -> None:
        await self.ctx.start()
        p = self.config.settings.proxy
        limits = conn_guard.Limits(p.max_connections, p.max_connections_per_ip, p.header_timeout_s)
        runner = web.AppRunner(
            create_app(self.ctx), handler_cancellation=True, access_log=None, keepalive_timeout=p.keepalive_s
        )
        ui = web.AppRunner(dashboard.create_app(self.ctx), access_log=None, keepalive_timeout=p.keepalive_s)
        for r, host, port, backlog in ((runner, p.host, p.port, 1024), (ui, p.ui_host, p.ui_port, 128)):
            await r.setup()
            self._runners.append(r)
            server, guard = await conn_guard.serve(r, host, port, limits, backlog)
            self._servers.append(server)
            self.guards.append(guard)
        log.info(
            "proxy_listening", url=f"http://{p.host}:{p.port}", dashboard=f"http://{p.ui_host}:{p.ui_port}"
        )

    async def stop(self) -> None:
        for server in self._servers:
            server.close()  # stop accepting; runner.cleanup() then ends open connections
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        await self.ctx.close()
        log.info("proxy_stopped")

    def kill_now(self) -> None:
        """The proxy owns no child processes: nothing to kill."""
