"""maintenance.* — the maintenance window: status, start, stop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardian_supervisor.rpc.server import Connection, RpcServer

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor


def register(server: RpcServer, sup: Supervisor) -> None:
    async def status(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """In maintenance or not, which services are stopped, the schedule, the current and next
        window, how long the proxy has been idle, and what the window logic would do now."""
        return sup.learning.maintenance.status()

    async def start(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Enter maintenance now, whatever the window says: stop services_to_stop and start the
        benchmark suite. It ends when the run does, or with maintenance.stop."""
        return await sup.learning.maintenance.enter("started by hand")

    async def stop(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Leave maintenance now: stop the run (it can be continued) and start the services again."""
        return await sup.learning.maintenance.leave("stopped by hand")

    server.register("maintenance.status", status)
    server.register("maintenance.start", start)
    server.register("maintenance.stop", stop)
