"""Who runs when: acquire/release leases, choose the next model to start, idle unload.

All decisions happen on the event loop in `_decide`, which never awaits, so there is no
lock to get wrong. Transitions (stop victims, start a model) run one at a time in
`_bring_up`; requests for a model that is loading join that load. A model with leases
is never stopped. Where a new model goes and what must leave for it is the planner's call;
starting and stopping servers is the lifecycle's (models/lifecycle.py).

No missed wake-ups, by construction: every event that can make a waiter admissible
(grant, release, ready, exit, stop, a new or cancelled waiter, unload, config change, a
fairness window or a parked plan's re-check running out) goes through `_wake`, which bumps
`_epoch` and schedules `_decide`. A plan that said Wait parks the scheduler only for the
epoch it started in, so anything that happened while the plan was being made re-plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from guardian_supervisor.models.lifecycle import Lifecycle
from guardian_supervisor.models.plans import LifecycleHook, Planner, Refuse, Wait
from guardian_supervisor.models.runtime import Lease, ModelRuntime, Profile, State
from shared.config import Config, ModelConfig, resolve_model
from shared.durations import parse_keep_alive
from shared.errors import Code, GuardianError

log = structlog.get_logger("scheduler")


PROFILE_KEYS = ("batch_size", "ubatch_size")


@dataclass(frozen=True)
class Want:
    """What a request needs from a running server: at least `ctx`, and these launch overrides."""

    ctx: int | None = None
    profile: Profile | None = None  # None: any launch settings will do
    user: bool = True  # a user's request never runs on a server launched for Guardian's own work

    def met_by(self, rt: ModelRuntime) -> bool:
        return (
            (self.ctx is None or (rt.ctx or 0) >= self.ctx)
            and (self.profile is None or rt.profile == self.profile)
            and not (self.user and rt.internal)
        )


def make_profile(overrides: Mapping[str, int] | None) -> Profile | None:
    if overrides is None:
        return None
    bad = [k for k in overrides if k not in PROFILE_KEYS]
    if bad:
        raise GuardianError(
            Code.INVALID_PARAMS, f"unknown launch setting {bad[0]!r}; allowed: {', '.join(PROFILE_KEYS)}"
        )
    return tuple(sorted((k, int(v)) for k, v in overrides.items()))


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock:
    """Time and timers, apart so tests can drive the scheduler on a fake clock."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


REPLAN_S = 1.0  # a parked plan is re-checked this often: memory can free up outside Guardian


@dataclass(frozen=True)
class Candidate:
    """A model some waiter needs started (or relaunched), as `choose_next` sees it."""

    model: str
    oldest: float  # when its oldest waiter arrived
    priority: int


def choose_next(candidates: list[Candidate], window_s: float) -> Candidate | None:
    """The model to bring up next: the one with the oldest waiter, all its waiters together.

    `priority` (models.yaml) breaks near-ties: among models whose oldest waiter arrived
    within one fairness window of the oldest of all, the highest priority goes first, then
    the oldest. The window bounds how long a higher priority can make a lower one wait.
    """
    if not candidates:
        return None
    first = min(c.oldest for c in candidates)
    close = [c for c in candidates if c.oldest - first <= window_s]
    return min(close, key=lambda c: (-c.priority, c.oldest, c.model))


@dataclass
class Waiter:
    model: str
    future: asyncio.Future[Lease]
    want: Want
    since: float
    conn_id: int


class Scheduler:
    def __init__(
        self,
        config: Config,
        planner: Planner,
        lifecycle: type[Lifecycle] = Lifecycle,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.planner = planner
        self.clock = clock or Clock()
        self.lifecycle = lifecycle(
            lambda: self.config, planner, lambda: self.runtimes, self._wake, self._on_idle, self._on_stuck
        )
        self.runtimes: dict[str, ModelRuntime] = {name: ModelRuntime(m) for name, m in config.models.items()}
        self.leases: dict[str, Lease] = {}
        self.queue: deque[Waiter] = deque()
        self._lease_ids = itertools.count(1)
        self._transition: asyncio.Task[None] | None = None
        self._blocked: dict[str, float] = {}  # model → since when a waiting swap needs it drained
        self._unloading: set[str] = set()  # models an unload is draining: no new leases
        self._epoch = 0  # bumped by every event that may make a waiter admissible
        self._parked_at: int | None = None  # the epoch whose plan said Wait: no re-plan until it moves
        self._timer: Timer | None = None  # next fairness-window end or parked re-check
        self._timer_at: float | None = None
        self._recheck_at = 0.0  # when a parked plan is re-made even if nothing woke us
        self._decide_scheduled = False
        self._closing = False
        self.on_acquire: list[Callable[[str, bool], None]] = []  # (model, is a user request)
        # Launch settings when a request names none (the request optimizer fills this in).
        self.launch_defaults: Callable[[ModelConfig], tuple[int | None, Profile]] | None = None

    @property
    def hooks(self) -> list[LifecycleHook]:
        return self.lifecycle.hooks

    def _wake(self) -> None:
        """Something changed that may make a waiter admissible: decide again, re-plan if parked."""
        self._epoch += 1
        self._kick()

    def _on_idle(self, rt: ModelRuntime) -> None:
        self.lifecycle.background(self.unload(rt.name, "idle (keep_alive expired)"))

    def _on_stuck(self, rt: ModelRuntime) -> None:
        """The watchdog killed a stuck server: start it again, through the queue like a request."""
        self.lifecycle.background(self._restart(rt.name))

    async def _restart(self, name: str) -> None:
        try:
            lease, _rt = await self.acquire(name, conn_id=0, keep_alive=None)
        except GuardianError as e:
            log.warning("restart_failed", model=name, error=e.message)
            return
        self.release(lease.id)

    # ---- public API (RPC handlers call these) -------------------------------------------

    async def acquire(
        self,
        requested: str,
        conn_id: int,
        ctx: int | None = None,
        keep_alive: Any = None,
        profile: Mapping[str, int] | None = None,
        user: bool = True,
    ) -> tuple[Lease, ModelRuntime]:
        if self._closing:
            raise GuardianError(Code.SHUTTING_DOWN, "guardian-supervisor is shutting down; retry shortly")
        model = self.resolve(requested)
        rt = self.runtimes[model.name]
        # Like Ollama: each request's keep_alive sets the model's idle timeout; none = default.
        rt.keep_alive_s = parse_keep_alive(keep_alive) if keep_alive is not None else None
        want = Want(min(ctx, model.context) if ctx else None, make_profile(profile), user)
        for observer in self.on_acquire:
            observer(model.name, user)
        if self._admissible(rt, want):
            return self._grant(rt, conn_id), rt
        if len(self.queue) >= self.config.settings.supervisor.max_queue:
            raise GuardianError(
                Code.QUEUE_FULL, f"{len(self.queue)} requests are already waiting for a model; retry shortly"
            )
        waiter = Waiter(
            model.name, asyncio.get_running_loop().create_future(), want, self.clock.now(), conn_id
        )
        self.queue.append(waiter)
        self._wake()
        try:
            lease = await waiter.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self.queue.remove(waiter)
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(waiter.future.result().id)  # granted just as the caller gave up
            self._wake()  # it may have been the swap that held other models' requests back
            raise
        return lease, rt

    def release(self, lease_id: str) -> bool:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return False
        rt = self.runtimes.get(lease.model)
        if rt is not None:
            rt.inflight -= 1
            rt.last_used, rt.last_used_wall = time.monotonic(), time.time()
            if rt.inflight == 0:
                rt.drained.set()
                self.lifecycle.arm_idle_timer(rt)
        self._wake()
        return True

    def release_connection(self, conn_id: int) -> int:
        mine = [lid for lid, lease in self.leases.items() if lease.conn_id == conn_id]
        for lid in mine:
            self.release(lid)
        if mine:
            log.info("leases_dropped", conn=conn_id, count=len(mine))
        return len(mine)

    async def unload(self, name: str, reason: str = "unload requested") -> bool:
        """Stop a model once its in-flight requests finish; new ones queue meanwhile."""
        rt = self.runtimes[self.resolve(name).name]
        if not rt.resident and rt.state is not State.FAILED:
            return False
        self._unloading.add(rt.name)  # admit no new requests: drain now
        try:
            while rt.inflight > 0:
                rt.drained.clear()
                await rt.drained.wait()
            while self._transition is not None and not self._transition.done():
                await asyncio.shield(self._transition)
            if rt.state in (State.READY, State.STARTING, State.FAILED):
                await self.lifecycle.stop(rt, reason)
        finally:
            self._unloading.discard(rt.name)
            self._wake()
        return True

    def resolve(self, requested: str) -> ModelConfig:
        model = resolve_model(self.config, requested)
        if model is None:
            raise GuardianError(Code.MODEL_NOT_FOUND, f"model '{requested}' not found", {"model": requested})
        return model

    def status(self) -> list[dict[str, Any]]:
        """Each model's runtime status, with its queue: how many wait and the oldest's wait."""
        now = self.clock.now()
        waiting: dict[str, list[float]] = {}
        for w in self.queue:
            if not w.future.done():
                waiting.setdefault(w.model, []).append(w.since)
        out = []
        for rt in self.runtimes.values():
            st = rt.status()
            since = waiting.get(rt.name, [])
            st["queued"] = len(since)
            st["oldest_wait_s"] = round(now - min(since), 3) if since else 0.0
            st["priority"] = rt.config.priority
            out.append(st)
        return out

    def apply_config(self, config: Config) -> list[str]:
        """Swap in a reloaded config. Changed or removed models restart/stop once idle."""
        self.config = config
        changed: list[str] = []
        for name, rt in list(self.runtimes.items()):
            new = config.models.get(name)
            if new is None or new != rt.config:
                changed.append(name)
                if rt.resident:
                    self.lifecycle.background(self._retire(rt, new))
                elif new is None:
                    del self.runtimes[name]
                else:
                    rt.config = new
        for name, model in config.models.items():
            if name not in self.runtimes:
                self.runtimes[name] = ModelRuntime(model)
                changed.append(name)
        self._wake()
        return changed

    async def close(self) -> None:
        self._closing = self.lifecycle.closing = True
        if self._timer is not None:
            self._timer.cancel()
        for w in self.queue:
            if not w.future.done():
                w.future.set_exception(
                    GuardianError(Code.SHUTTING_DOWN, "guardian-supervisor is shutting down")
                )
        self.queue.clear()
        if self._transition is not None:
            self._transition.cancel()
            with contextlib.suppress(BaseException):
                await self._transition
        await asyncio.gather(
            *(
                self.lifecycle.stop(rt, "supervisor shutting down")
                for rt in self.runtimes.values()
                if rt.child is not None and rt.child.returncode is None
            )
        )
        await self.lifecycle.close()

    def kill_all_now(self) -> None:
        self.lifecycle.kill_all_now()

    # ---- decisions ----------------------------------------------------------------------

    def _drain_deadline(self, rt: ModelRuntime) -> float | None:
        """When a model that a waiting swap needs drained stops taking new requests.

        The window counts from when the swap started waiting or the model became READY,
        whichever is later: a model that was blocked while it loaded still serves its
        queue for a full window once it is up.
        """
        since = self._blocked.get(rt.name)
        if since is None:
            return None
        start = max(since, rt.since) if rt.state is State.READY else since
        return start + self.config.settings.supervisor.swap_fairness_s

    def _admissible(self, rt: ModelRuntime, want: Want) -> bool:
        if rt.state is not State.READY or not want.met_by(rt) or rt.name in self._unloading:
            return False
        deadline = self._drain_deadline(rt)
        return deadline is None or self.clock.now() < deadline

    def _grant(self, rt: ModelRuntime, conn_id: int) -> Lease:
        lease = Lease(f"l{next(self._lease_ids)}", rt.name, conn_id, time.monotonic())
        self.leases[lease.id] = lease
        rt.inflight += 1
        rt.drained.clear()
        rt.cancel_idle_timer()
        return lease

    def _kick(self) -> None:
        if not self._decide_scheduled:
            self._decide_scheduled = True
            asyncio.get_running_loop().call_soon(self._decide)

    def _needs_transition(self, w: Waiter) -> bool:
        """Its model must be started or relaunched: not up and suitable, nor on its way down."""
        rt = self.runtimes.get(w.model)
        if rt is None or w.future.done() or rt.state is State.STOPPING:
            return False
        return not (rt.state is State.READY and w.want.met_by(rt))

    def _transitioning(self) -> bool:
        return self._transition is not None and not self._transition.done()

    def _decide(self) -> None:
        self._decide_scheduled = False
        if self._closing:
            return
        if not any(self._needs_transition(w) for w in self.queue):
            # No swap waits any more (served, failed or gone): what it asked to drain serves again.
            self._blocked.clear()
            self._parked_at = None
        for name in [n for n in self._blocked if not self.runtimes.get(n) or not self.runtimes[n].resident]:
            del self._blocked[name]  # stopped or gone: it holds nothing back any more
        for w in list(self.queue):  # grant everything that can run now
            if w.future.done():
                self.queue.remove(w)
                continue
            rt = self.runtimes.get(w.model)
            if rt is None:
                self.queue.remove(w)
                w.future.set_exception(GuardianError(Code.MODEL_NOT_FOUND, f"model '{w.model}' not found"))
            elif self._admissible(rt, w.want):
                self.queue.remove(w)
                w.future.set_result(self._grant(rt, w.conn_id))
        self._arm_timer()
        if self._transitioning() or self._parked_at == self._epoch:
            return
        nxt = self._next_target()
        if nxt is not None:
            rt, want = nxt
            self._transition = asyncio.create_task(self._bring_up(rt, want, self._epoch))

    def _next_target(self) -> tuple[ModelRuntime, Want] | None:
        """The model to bring up and what it must meet, taking all its waiters together."""
        groups: dict[str, list[Waiter]] = {}
        for w in self.queue:
            if self._needs_transition(w):
                groups.setdefault(w.model, []).append(w)
        pick = choose_next(
            [
                Candidate(m, min(w.since for w in ws), self.runtimes[m].config.priority)
                for m, ws in groups.items()
            ],
            self.config.settings.supervisor.swap_fairness_s,
        )
        if pick is None:
            return None
        ws = groups[pick.model]
        first = min(ws, key=lambda w: w.since)
        ctx = max((x.want.ctx or 0) for x in self.queue if x.model == pick.model) or None
        return self.runtimes[pick.model], Want(ctx, first.want.profile, first.want.user)

    def _arm_timer(self) -> None:
        """Wake at the next moment time alone changes a decision: a fairness window ending
        (its model stops taking requests and may drain) or a parked plan's re-check."""
        now = self.clock.now()
        due = [
            d
            for name in self._blocked
            if (rt := self.runtimes.get(name)) is not None and (d := self._drain_deadline(rt)) is not None
            if d > now
        ]
        if self._parked_at is not None and self._parked_at == self._epoch:
            due.append(max(self._recheck_at, now))
        at = min(due) if due else None
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, at
        if at is not None:
            self._timer = self.clock.call_later(at - now, self._timer_fired)

    def _park(self, epoch: int) -> None:
        self._parked_at = epoch
        self._recheck_at = self.clock.now() + REPLAN_S

    def _timer_fired(self) -> None:
        self._timer, self._timer_at = None, None
        self._wake()

    async def _bring_up(self, rt: ModelRuntime, want: Want, epoch: int) -> None:
        """One transition. Returning without starting anything parks the scheduler for `epoch`:
        only an event after the decision was taken (which bumps the epoch) re-plans."""
        try:
            if rt.state is State.READY:
                if want.met_by(rt):
                    return  # became admissible meanwhile; _decide grants on the next kick
                if rt.inflight > 0:  # reload with the new settings once its requests finish
                    self._blocked.setdefault(rt.name, self.clock.now())
                    self._park(epoch)
                    return
                self._blocked.pop(rt.name, None)  # drained: relaunched, it serves everyone again
                await self.lifecycle.stop(
                    rt, f"reload with context {want.ctx or rt.ctx} and settings {dict(want.profile or ())}"
                )
            if rt.state is State.STOPPING:
                return
            default_ctx, default_profile = (
                self.launch_defaults(rt.config) if self.launch_defaults else (None, ())
            )
            ctx = want.ctx or min(default_ctx or rt.config.context, rt.config.context)
            profile = want.profile if want.profile is not None else default_profile
            residents = [r for r in self.runtimes.values() if r.resident and r is not rt]
            plan = await self.planner.plan(rt, ctx, residents, profile)
            if isinstance(plan, Refuse):
                self._fail_waiters(
                    rt.name, GuardianError(Code.DOES_NOT_FIT, plan.message, {"model": rt.name, **plan.data})
                )
                rt.last_error = plan.message
                return
            if isinstance(plan, Wait):
                now = self.clock.now()
                for name in plan.blocked_by:
                    self._blocked.setdefault(name, now)
                self._park(epoch)
                return
            for name in plan.evict:
                victim = self.runtimes[name]
                if victim.inflight > 0:  # got a request while we stopped others: re-plan later
                    self._blocked.setdefault(name, self.clock.now())
                    self._park(epoch)
                    return
                self._blocked.pop(name, None)
                await self.lifecycle.stop(victim, f"evicted for {rt.name}")
            error = await self.lifecycle.launch(rt, ctx, profile, plan, internal=not want.user)
            if error is not None:
                self._fail_waiters(rt.name, error)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never leave waiters hanging on a bug
            log.exception("bring_up_failed", model=rt.name)
            self._fail_waiters(
                rt.name, GuardianError(Code.INTERNAL, f"internal error while loading '{rt.name}': {e}")
            )
        finally:
            self._transition = None
            self._kick()  # not a wake: if this plan parked, only a newer event re-plans

    # ---- helpers ----------------------------------------------------------------------

    def _fail_waiters(self, model: str, err: GuardianError) -> None:
        for w in list(self.queue):
            if w.model == model:
                self.queue.remove(w)
                if not w.future.done():
                    w.future.set_exception(err)

    async def _retire(self, rt: ModelRuntime, new: ModelConfig | None) -> None:
        await self.unload(rt.name, "configuration changed" if new else "removed from models.yaml")
        if new is None:
            self.runtimes.pop(rt.name, None)
        else:
            rt.config = new
