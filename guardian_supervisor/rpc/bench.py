"""bench.* — the benchmark suite: run, status, stop, records, history."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from guardian_supervisor.rpc.server import Connection, RpcServer, params_int, params_str
from shared.errors import Code, GuardianError

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor


def _models_param(params: dict[str, Any]) -> list[str] | None:
    models = params.get("models")
    if models is None or models == []:
        return None
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise GuardianError(Code.INVALID_PARAMS, "parameter 'models' must be a list of model names")
    return models


def register(server: RpcServer, sup: Supervisor) -> None:
    def bench() -> Any:
        return sup.learning.bench

    async def run(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Start a run over {models?: [..]} (default: every model in models.yaml, read fresh)
        and return at once. Continues the unfinished run with the same models unless {new: true}.
        Answers CONFLICT while a run over other models is in progress."""
        return await bench().start(_models_param(params), "manual", new=bool(params.get("new")))

    async def status(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """The current or last run: status (idle, running, paused, stopped, finished, failed,
        interrupted), progress, the cell being measured, and every cell's figures."""
        return bench().status()

    async def stop(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Stop the run now (the cell being measured is dropped, finished cells are kept);
        'bench.run' continues it later. Leaves the maintenance window if it was in one."""
        return await bench().stop("stopped by hand")

    async def records(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Each model's best generation and prompt speeds with the settings that won, and the
        record events (old and new figures): {model?, limit?}."""
        model = params_str(params, "model", required=False)
        name = sup.scheduler.resolve(model).name if model else None
        return bench().records_view(name, params_int(params, "limit", 50))

    async def history(params: dict[str, Any], conn: Connection) -> list[dict[str, Any]]:
        """Lines of data/benchmark_history.jsonl: {run_id?, model?, limit? (default 200)}."""
        run_id = params_str(params, "run_id", required=False)
        model = params_str(params, "model", required=False)
        lines = await asyncio.to_thread(sup.learning.store.read_history, run_id)
        if model:
            lines = [x for x in lines if x.get("model") == model]
        return lines[-params_int(params, "limit", 200) :]

    server.register("bench.run", run)
    server.register("bench.status", status)
    server.register("bench.stop", stop)
    server.register("bench.records", records)
    server.register("bench.history", history)
