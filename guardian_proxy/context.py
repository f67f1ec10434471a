"""What every proxy handler needs, created once at startup (nothing rebuilt per request)."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from guardian_proxy.catalog import Catalog
from guardian_proxy.metrics import ProxyMetrics
from guardian_proxy.supervisor_link import SupervisorLink
from shared.config import Config
from shared.keystore import KeyStore, keys_path


@dataclass
class ProxyContext:
    config: Config
    link: SupervisorLink
    session: aiohttp.ClientSession = field(init=False)
    keys: KeyStore = field(init=False)
    catalog: Catalog = field(init=False)
    metrics: ProxyMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyStore(keys_path(self.config.data_dir))
        self.catalog = Catalog(self.link)
        self.metrics = ProxyMetrics(self.link)

    def auth_required(self) -> bool:
        """settings auth.required; unset means required once any key has ever existed."""
        configured = self.config.settings.auth.required
        return configured if configured is not None else self.keys.keys_seen()

    async def start(self) -> None:
        # One session for all upstream calls, and no keep-alive: llama-server (cpp-httplib) has
        # a fixed pool of HTTP threads (max(-np + 2, cores - 1)) and an idle kept-alive
        # connection holds one of them for up to 5 s. Pooled, 8 clients on a 2-core box left 5
        # of 8 requests waiting ~5 s on a READY model; a loopback connect costs ~0.1 ms.
        connector = aiohttp.TCPConnector(limit=0, force_close=True, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        await self.keys.flush_async(force=True)
        await self.session.close()
        await self.link.close()


CTX_KEY = web.AppKey("guardian_ctx", ProxyContext)


def ctx_of(request: web.Request) -> ProxyContext:
    return request.app[CTX_KEY]
