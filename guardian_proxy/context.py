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
from shared.llama_http import POOL_PER_SERVER


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
        # One pooled session for all upstream calls; keep-alive below cpp-httplib's 5 s, and
        # never more connections to one server than it has HTTP threads (shared/llama_http.py).
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=POOL_PER_SERVER, keepalive_timeout=4.0, enable_cleanup_closed=True
        )
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        await self.keys.flush_async(force=True)
        await self.session.close()
        await self.link.close()


CTX_KEY = web.AppKey("guardian_ctx", ProxyContext)


def ctx_of(request: web.Request) -> ProxyContext:
    return request.app[CTX_KEY]
