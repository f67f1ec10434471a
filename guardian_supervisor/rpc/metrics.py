"""metrics.* — the supervisor's figures for the proxy's /metrics and dashboard (read-only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardian_supervisor.metrics import snapshot
from guardian_supervisor.rpc.server import Connection, RpcServer

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor


def register(server: RpcServer, sup: Supervisor) -> None:
    async def snap(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """One snapshot: per model state, in-flight, queue, loads (count, seconds histogram),
        stops by reason, memory per GPU (estimate vs measured), sessions, benchmark figures."""
        return await snapshot(sup)

    server.register("metrics.snapshot", snap)
