"""config.* — reload the configuration without a restart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardian_supervisor.rpc.server import Connection, RpcServer

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor


def register(server: RpcServer, sup: Supervisor) -> None:
    async def reload(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Re-read settings.yaml and models.yaml. A bad file keeps the running configuration
        and answers CONFIG_INVALID naming file, line and key."""
        changed = await sup.reload()
        return {"changed": changed, "models": list(sup.config.models)}

    async def get(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Where the configuration lives and the settings the proxy needs."""
        s = sup.config.settings
        return {
            "config_dir": str(sup.config.config_dir),
            "data_dir": str(s.supervisor.data_dir),
            "proxy": {"host": s.proxy.host, "port": s.proxy.port, "ui_port": s.proxy.ui_port},
        }

    server.register("config.reload", reload)
    server.register("config.get", get)
