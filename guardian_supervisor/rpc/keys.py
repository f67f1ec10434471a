"""keys.* — API keys for the proxy. The store is a file the proxy re-reads within a second."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from guardian_supervisor.rpc.server import Connection, RpcServer, params_str
from shared.keystore import KeyStore, keys_path

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor


def register(server: RpcServer, sup: Supervisor) -> None:
    def store() -> KeyStore:
        return KeyStore(keys_path(sup.config.data_dir))

    async def create(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Create key {name, models?: [..], expires?: '30d'}; the secret is in the reply, once."""
        name = params_str(params, "name")
        models = params.get("models")
        expires = params.get("expires")

        def run() -> dict[str, Any]:
            secret, record = store().create(name, models, expires)
            return {"key": secret, **record.to_public()}

        return await asyncio.to_thread(run)

    async def list_keys(params: dict[str, Any], conn: Connection) -> list[dict[str, Any]]:
        """Every key: name, created, expiry, last use and scope; never the secret."""
        return await asyncio.to_thread(lambda: [r.to_public() for r in store().list()])

    async def revoke(params: dict[str, Any], conn: Connection) -> bool:
        """Revoke key {name}; the proxy stops accepting it within a second."""
        name = params_str(params, "name")
        return await asyncio.to_thread(lambda: store().revoke(name))

    server.register("keys.create", create)
    server.register("keys.list", list_keys)
    server.register("keys.revoke", revoke)
