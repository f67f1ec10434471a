"""Scheduler decisions with a scripted planner and no processes: leases, swaps, drains."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from guardian_supervisor.models.lifecycle import Lifecycle
from guardian_supervisor.models.plans import Go, PlanResult, Wait
from guardian_supervisor.models.runtime import ModelRuntime, Profile, State
from guardian_supervisor.models.scheduler import Scheduler
from shared.config import Config, ModelConfig, Settings, SupervisorSettings


class ScriptedPlanner:
    """Everything fits, except that `wait_for` makes the named model wait on the others."""

    def __init__(self) -> None:
        self.wait_for: dict[str, tuple[str, ...]] = {}

    async def plan(
        self, target: ModelRuntime, ctx: int, residents: list[ModelRuntime], profile: Profile = ()
    ) -> PlanResult:
        blocked = tuple(
            r.name for r in residents if r.name in self.wait_for.get(target.name, ()) and r.inflight
        )
        return Wait(blocked) if blocked else Go()

    async def after_stop(self, stopped: ModelRuntime) -> None:
        pass

    def after_ready(self, rt: ModelRuntime, ctx: int) -> None:
        pass


class NoProcessLifecycle(Lifecycle):
    """Starting a model only walks its state machine: no llama-server."""

    async def launch(
        self, rt: ModelRuntime, ctx: int, profile: Profile, plan: Go, internal: bool = False
    ) -> None:
        rt.set_state(State.STARTING, "test")
        await asyncio.sleep(0)
        rt.ctx, rt.profile, rt.internal = ctx, profile, internal
        rt.set_state(State.READY, "test")
        self._changed()


FAIRNESS_S = 0.05


@pytest.fixture
def sched(tmp_path: Path) -> Scheduler:
    settings = Settings(supervisor=SupervisorSettings(data_dir=tmp_path / "data"))
    settings = replace(settings, supervisor=replace(settings.supervisor, swap_fairness_s=FAIRNESS_S))
    models = {n: ModelConfig(name=n, path=tmp_path / f"{n}.gguf", context=4096) for n in ("a", "b")}
    return Scheduler(
        Config(config_dir=tmp_path, settings=settings, models=models), ScriptedPlanner(), NoProcessLifecycle
    )


async def acquire(sched: Scheduler, model: str, **kw: Any) -> Any:
    lease, _rt = await asyncio.wait_for(sched.acquire(model, 1, **kw), 2)
    return lease


async def test_reload_for_a_larger_context_serves_the_waiter_after_the_fairness_window(sched):
    first = await acquire(sched, "a", ctx=1024)
    bigger = asyncio.create_task(acquire(sched, "a", ctx=2048))
    await asyncio.sleep(FAIRNESS_S * 3)  # the reload waits for `first` past the fairness window
    assert not bigger.done()
    sched.release(first.id)
    lease = await bigger
    assert sched.runtimes["a"].ctx == 2048
    sched.release(lease.id)
    again = await acquire(sched, "a")  # and later requests are not held back by the old drain
    sched.release(again.id)
    await sched.close()


async def test_a_swap_that_gives_up_stops_holding_back_the_model_it_waited_for(sched):
    sched.planner.wait_for["b"] = ("a",)
    held = await acquire(sched, "a")
    swap = asyncio.create_task(acquire(sched, "b"))
    await asyncio.sleep(FAIRNESS_S * 3)  # b waits for a to drain; a is now closed to new requests
    swap.cancel()  # the client that wanted b went away
    with pytest.raises(asyncio.CancelledError):
        await swap
    lease = await acquire(sched, "a")  # nobody waits for a to drain any more
    sched.release(lease.id)
    sched.release(held.id)
    assert sched.runtimes["b"].state is State.STOPPED
    await sched.close()
