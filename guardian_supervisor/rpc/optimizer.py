"""optimizer.* — what the request optimizer learned, and forgetting it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardian_supervisor.rpc.server import Connection, RpcServer, params_str

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor


def register(server: RpcServer, sup: Supervisor) -> None:
    async def show(params: dict[str, Any], conn: Connection) -> list[dict[str, Any]]:
        """Per model {model?}: the learned context and batch settings (null: none learned), why,
        and the benchmark result each came from; the conversation lengths seen."""
        model = params_str(params, "model", required=False)
        return sup.learning.optimizer.show(sup.scheduler.resolve(model).name if model else None)

    async def reset(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Forget what was learned for {model?} (default: all): conversation lengths, and
        benchmark results older than now. Returns the models reset."""
        model = params_str(params, "model", required=False)
        names = await sup.learning.optimizer.reset(sup.scheduler.resolve(model).name if model else None)
        return {"reset": names}

    server.register("optimizer.show", show)
    server.register("optimizer.reset", reset)
