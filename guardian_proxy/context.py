"""What every proxy handler needs, created once at startup (nothing rebuilt per request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import web

from guardian_proxy.supervisor_link import SupervisorLink
from shared.config import Config

Api = Literal["openai", "ollama"]


@dataclass
class ProxyContext:
    config: Config
    link: SupervisorLink
    session: aiohttp.ClientSession = field(init=False)

    async def start(self) -> None:
        # One pooled session for all upstream calls; keep-alive below cpp-httplib's 5 s.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        await self.session.close()
        await self.link.close()

    def check_scope(self, request: web.Request, model: str, api: Api) -> web.Response | None:
        """A response refusing the request when the caller's key may not use `model`."""
        return None


CTX_KEY = web.AppKey("guardian_ctx", ProxyContext)


def ctx_of(request: web.Request) -> ProxyContext:
    return request.app[CTX_KEY]
