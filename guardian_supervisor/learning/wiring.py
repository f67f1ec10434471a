"""Learning from idle time: wires the benchmark, the maintenance window and the optimizer
into the supervisor (one object, so daemon.py needs only a few lines).

`SupervisorBenchHost` is the benchmark's view of the supervisor: the scheduler's normal
acquire path (VRAM checks, eviction, refusal), the planner's memory figures, config reload.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from guardian_supervisor.learning.bench_measure import HttpMeasurer
from guardian_supervisor.learning.bench_plan import Cell
from guardian_supervisor.learning.bench_store import BenchStore
from guardian_supervisor.learning.bench_types import Loaded, ModelFacts, Preempted, UserActivity
from guardian_supervisor.learning.benchmark import Benchmark
from guardian_supervisor.learning.maintenance import CommandServiceRunner, Maintenance
from guardian_supervisor.learning.optimizer import Optimizer, ServerView
from guardian_supervisor.models.launcher import Child
from guardian_supervisor.models.runtime import State
from shared.config import timeouts_for
from shared.errors import GuardianError

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor

log = structlog.get_logger("learning")

BENCH_CONN = -1  # the connection id of the benchmark's own leases (RPC connections start at 1)


def _facts(sup: Supervisor) -> dict[str, ModelFacts]:
    """Blocking (stat): run in a thread."""
    out = {}
    for name, m in sup.config.models.items():
        try:
            size = m.path.stat().st_size
        except OSError:
            size = 0
        out[name] = ModelFacts(name, m.context, str(m.path), size, sup.config.backend_name(m))
    return out


class SupervisorBenchHost:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self._launched: dict[str, Child | None] = {}  # model → the server the benchmark started

    async def refresh_models(self) -> dict[str, ModelFacts]:
        try:
            await self.sup.reload()  # models.yaml read fresh for each run
        except GuardianError as e:
            log.warning("benchmark_config_kept", error=e.message)
        return await self.models()

    async def models(self) -> dict[str, ModelFacts]:
        return await asyncio.to_thread(_facts, self.sup)

    def resolve(self, name: str) -> str:
        return self.sup.scheduler.resolve(name).name

    async def acquire(self, cell: Cell) -> Loaded:
        sched = self.sup.scheduler
        profile = tuple(sorted(cell.profile.items()))
        rt = sched.runtimes.get(cell.model)
        if (
            rt is not None
            and rt.state is State.READY
            and rt.inflight == 0
            and (rt.ctx != cell.ctx or rt.profile != profile)
        ):
            # The scheduler would reuse a server with a larger context; a cell wants its own.
            await sched.unload(cell.model, f"benchmark: relaunch at context {cell.ctx}")
        lease, rt = await sched.acquire(
            cell.model, BENCH_CONN, ctx=cell.ctx, profile=cell.profile, user=False
        )
        if rt.ctx != cell.ctx:  # a user keeps a larger server busy: measure later
            sched.release(lease.id)
            raise Preempted(f"'{cell.model}' is in use at context {rt.ctx}")
        self._launched[cell.model] = rt.child
        timeout_s, _ = await asyncio.to_thread(timeouts_for, sched.config, rt.config)
        return Loaded(lease.id, f"http://127.0.0.1:{rt.port}", rt.ctx, rt.load_s, timeout_s)

    def release(self, lease: str) -> None:
        self.sup.scheduler.release(lease)

    async def memory(self, model: str) -> dict[str, Any]:
        sched = self.sup.scheduler
        described = await self.sup.planner.describe(sched.status())
        placed = described.get("placements", {}).get(model) or {}
        return {"mode": described.get("mode"), **placed}

    async def unload_leftovers(self) -> None:
        sched = self.sup.scheduler
        for name, child in list(self._launched.items()):
            rt = sched.runtimes.get(name)
            if rt is None or rt.child is not child or rt.state is not State.READY:
                self._launched.pop(name, None)  # gone, or relaunched by someone else since
            elif rt.inflight == 0:
                self._launched.pop(name, None)
                with contextlib.suppress(GuardianError):
                    await sched.unload(name, "benchmark finished with it")

    def user_busy(self) -> bool:
        """A user holds a lease or waits for one (a swap to their model is in progress)."""
        sched = self.sup.scheduler
        return any(lease.conn_id != BENCH_CONN for lease in sched.leases.values()) or any(
            w.want.user for w in sched.queue
        )


class Learning:
    """The benchmark suite, the maintenance window and the request optimizer, together."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.host = SupervisorBenchHost(sup)
        self.activity = UserActivity(busy=self.host.user_busy)
        self.store = BenchStore(sup.config.data_dir)
        self.measurer = HttpMeasurer()
        self.bench = Benchmark(
            self.host, self.store, lambda: sup.config.settings.benchmark, self.measurer, self.activity
        )
        self.maintenance = Maintenance(
            sup.config.data_dir / "maintenance_state.json",
            lambda: sup.config.settings,
            CommandServiceRunner(lambda: sup.config.settings.maintenance.service_command),
            self.bench,
            self.activity,
            self.host.user_busy,
        )
        self.optimizer = Optimizer(
            sup.config.data_dir / "optimizer_state.json",
            lambda: sup.config.settings.optimizer,
            lambda: sup.config.models,
            lambda: asyncio.to_thread(self.store.read_history),
            self._view,
        )
        self.bench.on_cell.append(lambda _line: self.optimizer.mark_dirty())
        sup.scheduler.on_acquire.append(self._on_acquire)
        sup.scheduler.launch_defaults = self.optimizer.launch_defaults

    def _on_acquire(self, model: str, user: bool) -> None:
        self.bench.note_acquire(model, user)
        self.optimizer.note_acquire(model, user)

    def _view(self, model: str) -> ServerView | None:
        rt = self.sup.scheduler.runtimes.get(model)
        if rt is None:
            return None
        url = f"http://127.0.0.1:{rt.port}" if rt.port else None
        return ServerView(str(rt.state), rt.inflight, url)

    async def start(self) -> None:
        await self.bench.load()
        await self.optimizer.load()
        await self.maintenance.start()  # restores services in the background if needed
        if self.bench.interrupted_source() == "manual":
            self.bench.resume()  # a run from the maintenance window waits for the window

    async def stop(self) -> None:
        await self.bench.close()  # the run keeps its status: it continues after the restart
        await self.maintenance.close()  # stops its loop; brings stopped services back
        await self.optimizer.close()
        await self.measurer.close()
