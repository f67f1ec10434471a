"""No missed wake-ups: the scheduler on a fake clock with a planner that takes its time.

The invariant under test: once the loop settles, no queued waiter's model is READY and
admissible, whatever order releases, plans, loads and the clock come in.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from guardian_supervisor.models.plans import Go, PlanResult, Wait
from guardian_supervisor.models.runtime import Lease, ModelRuntime, Profile, State
from guardian_supervisor.models.scheduler import Candidate, Scheduler, choose_next
from shared.config import Config, ModelConfig, Settings, SupervisorSettings
from tests.unit.models.test_scheduler import NoProcessLifecycle

WINDOW_S = 2.0


@dataclass
class FakeTimer:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeClock:
    """Monotonic time that jumps when told (runtimes stamp their states with the real
    monotonic clock, so this one runs on it, skewed); its timers fire only on `advance`."""

    skew: float = 0.0
    timers: list[FakeTimer] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() + self.skew

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now() + max(0.0, delay), callback)
        self.timers.append(timer)
        return timer

    def advance(self, dt: float) -> None:
        self.skew += dt
        now = self.now()
        due = [x for x in self.timers if not x.cancelled and x.at <= now]
        self.timers = [x for x in self.timers if x not in due and not x.cancelled]
        for x in due:
            x.callback()


class OneAtATimePlanner:
    """Room for one model (max_loaded_models: 1): evict an idle resident, wait on a busy one.

    `gate`, when set, holds each plan after it is decided (as a real planner awaits NVML and
    the estimator), so events can arrive between the decision and its answer. `outside`:
    memory held by something outside Guardian, so every plan says Wait on nobody.
    """

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.outside = False
        self.plans = 0

    async def plan(
        self, target: ModelRuntime, ctx: int, residents: list[ModelRuntime], profile: Profile = ()
    ) -> PlanResult:
        self.plans += 1
        busy = tuple(r.name for r in residents if r.inflight > 0)
        result: PlanResult = (
            Wait(()) if self.outside else Wait(busy) if busy else Go(evict=tuple(r.name for r in residents))
        )
        if self.gate is not None:
            await self.gate.wait()
        return result

    async def before_stop(self, rt: ModelRuntime) -> None:
        pass

    async def after_stop(self, stopped: ModelRuntime) -> None:
        pass

    def after_ready(self, rt: ModelRuntime, ctx: int) -> None:
        pass


class CountingLifecycle(NoProcessLifecycle):
    launches: list[str]

    async def launch(
        self, rt: ModelRuntime, ctx: int, profile: Profile, plan: Go, internal: bool = False
    ) -> None:
        self.launches = [*getattr(self, "launches", []), rt.name]
        await super().launch(rt, ctx, profile, plan, internal)

    async def stop(self, rt: ModelRuntime, reason: str) -> None:
        rt.cancel_idle_timer()
        rt.set_state(State.STOPPING, reason)
        await asyncio.sleep(0)
        rt.set_state(State.STOPPED, "test")
        rt.ctx, rt.profile = None, ()
        self._changed()


def make(tmp_path: Path, clock: FakeClock, priorities: dict[str, int] | None = None) -> Scheduler:
    sup = replace(SupervisorSettings(data_dir=tmp_path / "data"), swap_fairness_s=WINDOW_S, keep_alive=-1)
    models = {
        n: ModelConfig(
            name=n, path=tmp_path / f"{n}.gguf", context=4096, priority=(priorities or {}).get(n, 0)
        )
        for n in ("a", "b", "c")
    }
    config = Config(config_dir=tmp_path, settings=Settings(supervisor=sup), models=models)
    return Scheduler(config, OneAtATimePlanner(), CountingLifecycle, clock=clock)


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def stranded(sched: Scheduler) -> list[str]:
    """Queued waiters that could be served right now: each one is a missed wake-up."""
    return [
        w.model
        for w in sched.queue
        if not w.future.done() and sched._admissible(sched.runtimes[w.model], w.want)
    ]


def ask(sched: Scheduler, model: str) -> asyncio.Task[tuple[Lease, ModelRuntime]]:
    return asyncio.ensure_future(sched.acquire(model, 1))


async def test_a_release_while_the_plan_is_being_made_is_not_missed(tmp_path):
    clock = FakeClock()
    sched = make(tmp_path, clock)
    planner: OneAtATimePlanner = sched.planner  # type: ignore[assignment]
    held, _ = await sched.acquire("a", 1)
    planner.gate, planner.plans = asyncio.Event(), 0
    b = ask(sched, "b")
    await settle()
    assert planner.plans == 1  # decided Wait(a): a is busy, and the plan is still out
    sched.release(held.id)  # a drains while the planner is still answering
    await settle()
    planner.gate.set()  # the stale Wait arrives after the release
    planner.gate = None
    lease, rt = await asyncio.wait_for(b, 1)  # before the fix: parked for good, nothing left to wake it
    assert rt.name == "b" and rt.state is State.READY
    sched.release(lease.id)
    await sched.close()


async def test_a_plan_that_waits_on_memory_outside_guardian_is_made_again(tmp_path):
    clock = FakeClock()
    sched = make(tmp_path, clock)
    planner: OneAtATimePlanner = sched.planner  # type: ignore[assignment]
    planner.outside = True
    b = ask(sched, "b")
    await settle()
    assert not b.done() and planner.plans == 1
    planner.outside = False  # another process freed its memory: no Guardian event says so
    clock.advance(1.5)
    await settle()
    lease, _ = await asyncio.wait_for(b, 1)
    sched.release(lease.id)
    await sched.close()


async def test_the_fairness_window_counts_from_ready_and_its_end_wakes_the_swap(tmp_path):
    clock = FakeClock()
    sched = make(tmp_path, clock)
    held, _ = await sched.acquire("a", 1)
    b = ask(sched, "b")
    await settle()
    again, _ = await asyncio.wait_for(sched.acquire("a", 1), 1)  # within the window: served at once
    clock.advance(WINDOW_S + 0.1)  # the window ends: a takes no new requests, so it can drain
    await settle()
    late = ask(sched, "a")
    await settle()
    assert not late.done() and sched.status()[0]["queued"] == 1
    sched.release(held.id)
    sched.release(again.id)
    lease_b, _ = await asyncio.wait_for(b, 1)
    assert sched.runtimes["a"].state is State.STOPPED
    sched.release(lease_b.id)
    lease_a, _ = await asyncio.wait_for(late, 1)
    sched.release(lease_a.id)
    assert stranded(sched) == []
    await sched.close()


async def test_queue_status_names_how_many_wait_and_for_how_long(tmp_path):
    clock = FakeClock()
    sched = make(tmp_path, clock)
    held, _ = await sched.acquire("a", 1)
    clock.advance(WINDOW_S + 1)
    waiting = [ask(sched, "b") for _ in range(3)]
    await settle()
    clock.advance(0.5)  # fires the window timer too: a drains, but it still holds a lease
    await settle()
    by_name = {m["name"]: m for m in sched.status()}
    assert by_name["b"]["queued"] == 3 and by_name["b"]["oldest_wait_s"] == pytest.approx(0.5, abs=0.05)
    assert by_name["a"]["queued"] == 0 and by_name["a"]["oldest_wait_s"] == 0.0
    sched.release(held.id)
    for t in waiting:
        lease, _ = await asyncio.wait_for(t, 1)
        sched.release(lease.id)
    await sched.close()


async def test_alternating_clients_are_collated_into_few_swaps(tmp_path):
    """8 clients, each alternating a/b, 64 requests: ABAB... per client becomes AAAA BBBB."""
    clock = FakeClock()
    sched = make(tmp_path, clock)

    async def client(i: int) -> None:
        for k in range(8):
            lease, _ = await sched.acquire("ab"[(i + k) % 2], i)
            await asyncio.sleep(0)  # the request runs
            sched.release(lease.id)

    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(8))), 5)
    launches = sched.lifecycle.launches  # type: ignore[attr-defined]
    # Per-request swapping would load ~64 times; collated, each phase serves every client.
    assert len(launches) <= 12, launches
    await sched.close()


@pytest.mark.parametrize("seed", range(12))
async def test_random_orders_of_events_never_strand_a_waiter(tmp_path, seed):
    rng = random.Random(seed)
    clock = FakeClock()
    sched = make(tmp_path / str(seed), clock, priorities={"c": 1})
    planner: OneAtATimePlanner = sched.planner  # type: ignore[assignment]
    pending: list[asyncio.Task[Any]] = []
    held: list[Lease] = []
    for _step in range(120):
        op = rng.random()
        if op < 0.35:
            pending.append(ask(sched, rng.choice("abc")))
        elif op < 0.6 and held:
            sched.release(held.pop(rng.randrange(len(held))).id)
        elif op < 0.75:
            clock.advance(rng.choice([0.1, 0.5, 1.0, WINDOW_S + 0.1]))
        elif op < 0.85 and planner.gate is None:
            planner.gate = asyncio.Event()  # plans from now on are held open
        elif op < 0.9 and planner.gate is not None:
            planner.gate.set()  # the held plans answer (maybe stale by now)
            planner.gate = None
        elif op < 0.95 and pending:
            pending.pop(rng.randrange(len(pending))).cancel()
        await settle()
        for t in [t for t in pending if t.done()]:
            pending.remove(t)
            if not t.cancelled():
                held.append(t.result()[0])
        if planner.gate is None:  # with a plan held open, waiting is the right answer
            assert stranded(sched) == [], f"step {_step}: admissible waiters left queued"
    # Drain: release everything; every request still waiting must be served.
    if planner.gate is not None:
        planner.gate.set()
        planner.gate = None
    for _ in range(40):
        for lease in held:
            sched.release(lease.id)
        held.clear()
        clock.advance(WINDOW_S + 0.1)
        await settle()
        for t in [t for t in pending if t.done()]:
            pending.remove(t)
            if not t.cancelled():
                held.append(t.result()[0])
        if not pending and not held:
            break
    assert not pending, f"{len(pending)} requests never served"
    await sched.close()


def test_choose_next_takes_the_oldest_waiter_and_priority_breaks_near_ties():
    a, b = Candidate("a", 10.0, 0), Candidate("b", 11.0, 5)
    assert choose_next([a, b], window_s=2.0) == b  # within a window of the oldest: priority wins
    assert choose_next([a, b], window_s=0.5) == a  # older by more than a window: age wins
    assert choose_next([a, Candidate("c", 10.0, 0)], window_s=2.0) == a  # then age, then name
    assert choose_next([], window_s=2.0) is None
