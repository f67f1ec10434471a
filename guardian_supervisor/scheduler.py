"""Who runs when: acquire/release leases, start/stop/switch models, idle unload.

All decisions happen on the event loop in `_decide`, which never awaits, so there is no
lock to get wrong. Transitions (stop victims, start a model) run one at a time in
`_bring_up`; requests for a model that is loading join that load. A model with leases
is never stopped. Where a new model goes and what must leave for it is the planner's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp
import structlog

from guardian_supervisor.argv import Placement, build_argv, check_model
from guardian_supervisor.launcher import Child, LoadError, llama_session, wait_ready
from guardian_supervisor.runtime import Lease, ModelRuntime, Profile, State
from shared.config import Config, ModelConfig, resolve_model, timeouts_for
from shared.durations import parse_keep_alive
from shared.errors import Code, GuardianError

log = structlog.get_logger("scheduler")


@dataclass(frozen=True)
class Go:
    """Start the target after stopping `evict` (in order), with these launch arguments."""

    evict: tuple[str, ...] = ()
    placement: Placement = field(default_factory=Placement)
    info: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES for the plan's GPUs


@dataclass(frozen=True)
class Wait:
    """The target fits only once these busy models have drained."""

    blocked_by: tuple[str, ...]


@dataclass(frozen=True)
class Refuse:
    """The target can never fit; the message names the model and the numbers."""

    message: str
    data: dict[str, Any] = field(default_factory=dict)


PlanResult = Go | Wait | Refuse


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


class LifecycleHook(Protocol):
    """Work that must happen while a server is up but unavailable to requests."""

    async def model_started(self, rt: ModelRuntime) -> None:
        """Healthy, not yet READY: requests are let through only after this returns."""

    async def model_stopping(self, rt: ModelRuntime, reason: str) -> None:
        """STOPPING, no leases, server still running: the last chance to talk to it."""


class Planner(Protocol):
    async def plan(
        self, target: ModelRuntime, ctx: int, residents: list[ModelRuntime], profile: Profile = ()
    ) -> PlanResult: ...

    async def before_stop(self, rt: ModelRuntime) -> None: ...

    async def after_stop(self, stopped: ModelRuntime) -> None: ...

    def after_ready(self, rt: ModelRuntime, ctx: int) -> None: ...


@dataclass
class Waiter:
    model: str
    future: asyncio.Future[Lease]
    want: Want
    since: float
    conn_id: int


def resolve_binary(binary: str) -> str | None:
    """Absolute paths as given; bare names on PATH or beside this Python (the venv's bin)."""
    if os.sep in binary:
        return binary if os.access(binary, os.X_OK) else None
    search = os.pathsep.join([os.environ.get("PATH", ""), os.path.dirname(sys.executable)])
    return shutil.which(binary, path=search)


class Scheduler:
    def __init__(self, config: Config, planner: Planner) -> None:
        self.config = config
        self.planner = planner
        self.runtimes: dict[str, ModelRuntime] = {name: ModelRuntime(m) for name, m in config.models.items()}
        self.leases: dict[str, Lease] = {}
        self.queue: deque[Waiter] = deque()
        self._lease_ids = itertools.count(1)
        self._transition: asyncio.Task[None] | None = None
        self._blocked: dict[str, float] = {}  # model → since when a waiting swap needs it drained
        self._unloading: set[str] = set()  # models an unload is draining: no new leases
        self._parked = False  # last plan said Wait: re-plan only after a release or exit
        self._decide_scheduled = False
        self._closing = False
        self._http: aiohttp.ClientSession | None = None
        self.on_acquire: list[Callable[[str, bool], None]] = []  # (model, is a user request)
        self.hooks: list[LifecycleHook] = []
        # Launch settings when a request names none (the request optimizer fills this in).
        self.launch_defaults: Callable[[ModelConfig], tuple[int | None, Profile]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            model.name, asyncio.get_running_loop().create_future(), want, time.monotonic(), conn_id
        )
        self.queue.append(waiter)
        self._kick()
        try:
            lease = await waiter.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self.queue.remove(waiter)
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(waiter.future.result().id)  # granted just as the caller gave up
            self._kick()  # it may have been the swap that held other models' requests back
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
                self._arm_idle_timer(rt)
        self._parked = False
        self._kick()
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
                await self._stop(rt, reason)
        finally:
            self._unloading.discard(rt.name)
            self._parked = False
            self._kick()
        return True

    def resolve(self, requested: str) -> ModelConfig:
        model = resolve_model(self.config, requested)
        if model is None:
            raise GuardianError(Code.MODEL_NOT_FOUND, f"model '{requested}' not found", {"model": requested})
        return model

    def status(self) -> list[dict[str, Any]]:
        return [rt.status() for rt in self.runtimes.values()]

    def apply_config(self, config: Config) -> list[str]:
        """Swap in a reloaded config. Changed or removed models restart/stop once idle."""
        self.config = config
        changed: list[str] = []
        for name, rt in list(self.runtimes.items()):
            new = config.models.get(name)
            if new is None or new != rt.config:
                changed.append(name)
                if rt.resident:
                    self._background(self._retire(rt, new))
                elif new is None:
                    del self.runtimes[name]
                else:
                    rt.config = new
        for name, model in config.models.items():
            if name not in self.runtimes:
                self.runtimes[name] = ModelRuntime(model)
                changed.append(name)
        self._kick()
        return changed

    async def close(self) -> None:
        self._closing = True
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
                self._stop(rt, "supervisor shutting down")
                for rt in self.runtimes.values()
                if rt.child is not None and rt.child.returncode is None
            )
        )
        if self._http is not None:
            await self._http.close()

    def kill_all_now(self) -> None:
        for rt in self.runtimes.values():
            if rt.child is not None:
                rt.child.kill_now()

    # ---- decisions ----------------------------------------------------------------------

    def _admissible(self, rt: ModelRuntime, want: Want) -> bool:
        if rt.state is not State.READY or not want.met_by(rt) or rt.name in self._unloading:
            return False
        since = self._blocked.get(rt.name)
        # A swap waiting on this model: keep serving it for a short fairness window, then drain.
        return since is None or time.monotonic() - since < self.config.settings.supervisor.swap_fairness_s

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

    def _decide(self) -> None:
        self._decide_scheduled = False
        if self._closing:
            return
        if not any(self._needs_transition(w) for w in self.queue):
            # No swap waits any more (served, failed or gone): what it asked to drain serves again.
            self._blocked.clear()
            self._parked = False
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
        if (self._transition is not None and not self._transition.done()) or self._parked:
            return
        # The oldest waiter whose model needs a transition decides the next one (FIFO across
        # models). Waiters of a model that is up but draining, or stopping, just wait.
        for w in self.queue:
            if not self._needs_transition(w):
                continue
            rt = self.runtimes[w.model]
            ctx = max((x.want.ctx or 0) for x in self.queue if x.model == rt.name) or None
            self._transition = asyncio.create_task(self._bring_up(rt, Want(ctx, w.want.profile, w.want.user)))
            return

    async def _bring_up(self, rt: ModelRuntime, want: Want) -> None:
        try:
            if rt.state is State.READY:
                if want.met_by(rt):
                    return  # became admissible meanwhile; _decide grants on the next kick
                if rt.inflight > 0:  # reload with the new settings once its requests finish
                    self._blocked.setdefault(rt.name, time.monotonic())
                    self._parked = True
                    return
                self._blocked.pop(rt.name, None)  # drained: relaunched, it serves everyone again
                await self._stop(
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
                now = time.monotonic()
                for name in plan.blocked_by:
                    self._blocked.setdefault(name, now)
                self._parked = True
                return
            for name in plan.evict:
                victim = self.runtimes[name]
                if victim.inflight > 0:  # got a request while we stopped others: re-plan later
                    self._parked = True
                    return
                self._blocked.pop(name, None)
                await self._stop(victim, f"evicted for {rt.name}")
            await self._launch(rt, ctx, profile, plan, internal=not want.user)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never leave waiters hanging on a bug
            log.exception("bring_up_failed", model=rt.name)
            self._fail_waiters(
                rt.name, GuardianError(Code.INTERNAL, f"internal error while loading '{rt.name}': {e}")
            )
        finally:
            self._transition = None
            self._kick()

    # ---- effects ------------------------------------------------------------------------

    def _fail_waiters(self, model: str, err: GuardianError) -> None:
        for w in list(self.queue):
            if w.model == model:
                self.queue.remove(w)
                if not w.future.done():
                    w.future.set_exception(err)

    def _pick_port(self, avoid: set[int] | None = None) -> int:
        used = {rt.port for rt in self.runtimes.values() if rt.port is not None} | (avoid or set())
        port = self.config.settings.supervisor.port_base
        while port < 65535:
            if port not in used:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    # As llama-server binds: a port whose old connections linger is usable.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind(("127.0.0.1", port))
                        return port
                    except OSError:
                        pass
            port += 1
        raise GuardianError(Code.LOAD_FAILED, "no free TCP port above supervisor.port_base")

    async def _launch(
        self, rt: ModelRuntime, ctx: int, profile: Profile, plan: Go, internal: bool = False
    ) -> None:
        overrides: dict[str, Any] = dict(profile)
        cfg, settings = replace(rt.config, **overrides), self.config.settings
        backend_name = self.config.backend_name(cfg)
        backend = settings.backends[backend_name]
        problem = check_model(cfg, backend)
        binary = await asyncio.to_thread(resolve_binary, backend.binary)  # stats the filesystem
        if problem is None and binary is None:
            problem = (
                f"model '{cfg.name}': backend '{backend_name}' binary {backend.binary!r} was not found or is not executable; "
                f"install it or set backends.{backend_name}.binary in settings.yaml"
            )
        if problem is not None:
            await self.planner.after_stop(rt)
            rt.last_error = problem
            self._fail_waiters(
                rt.name,
                GuardianError(
                    Code.BAD_FLAG if "flag" in problem or "kv_type" in problem else Code.LOAD_FAILED,
                    problem,
                    {"model": cfg.name},
                ),
            )
            return
        assert binary is not None
        rt.request_timeout_s, load_timeout = await asyncio.to_thread(timeouts_for, self.config, cfg)
        slot_dir = settings.supervisor.data_dir / "slots" / cfg.name
        rt.set_state(State.STARTING, "requested")
        rt.last_error, rt.last_error_tail = None, []
        t0 = time.monotonic()
        env = {**os.environ, **plan.env} if plan.env else None  # None: inherit ours
        child: Child | None = None
        try:
            await asyncio.to_thread(slot_dir.mkdir, parents=True, exist_ok=True)
            taken: set[int] = set()
            for attempt in (1, 2):
                rt.port = self._pick_port(taken)
                rt.argv = build_argv(
                    cfg,
                    backend,
                    binary=binary,
                    port=rt.port,
                    ctx=ctx,
                    placement=plan.placement,
                    slot_dir=slot_dir,
                )
                child = Child(
                    cfg.name,
                    rt.argv,
                    settings.supervisor.data_dir / "logs" / f"{cfg.name}.log",
                    settings.supervisor.log_ring_lines,
                )
                child.on_exit = lambda c: self._on_exit(rt, c)
                rt.child = child
                await child.start(env)
                try:
                    await wait_ready(
                        child,
                        f"http://127.0.0.1:{rt.port}",
                        self._session(),
                        load_timeout,
                        settings.supervisor.health_poll_ms / 1000,
                    )
                    break
                except LoadError as e:
                    # Another process took the port between our check and llama-server's bind.
                    if attempt == 2 or e.timed_out or not any("bind" in line for line in e.tail):
                        raise
                    log.warning("port_taken_retrying", model=cfg.name, port=rt.port)
                    taken.add(rt.port)
        except (LoadError, OSError) as e:
            timed_out = isinstance(e, LoadError) and e.timed_out
            tail = e.tail if isinstance(e, LoadError) else []
            if child is not None and child.proc is not None:
                await child.stop(0 if timed_out else settings.supervisor.stop_grace_s)
            msg = f"model '{cfg.name}' failed to load: {e}"
            rt.last_error, rt.last_error_tail = msg, tail
            if rt.state is State.STARTING:
                rt.set_state(State.FAILED, str(e))
            rt.port = None
            await self.planner.after_stop(rt)
            code = Code.LOAD_TIMEOUT if timed_out else Code.LOAD_FAILED
            self._fail_waiters(rt.name, GuardianError(code, msg, {"model": cfg.name, "log_tail": tail[-10:]}))
            return
        except asyncio.CancelledError:
            if child is not None:
                await child.stop(0)
            raise
        rt.ctx, rt.profile, rt.internal = ctx, profile, internal
        await self._run_hooks("model_started", rt)
        rt.load_s = time.monotonic() - t0
        rt.set_state(State.READY, f"healthy after {rt.load_s * 1000:.0f} ms")
        self.planner.after_ready(rt, ctx)
        self._notify(rt)
        self._arm_idle_timer(rt)

    async def _stop(self, rt: ModelRuntime, reason: str) -> None:
        rt.cancel_idle_timer()
        child = rt.child
        was_serving = rt.state is State.READY and child is not None and child.returncode is None
        if rt.state in (State.READY, State.STARTING, State.FAILED):
            rt.set_state(State.STOPPING, reason)
        if was_serving:
            await self._run_hooks("model_stopping", rt, reason)
        if child is not None:
            if child.returncode is None:
                await self.planner.before_stop(rt)
            await child.stop(self.config.settings.supervisor.stop_grace_s)
        if rt.state is State.STOPPING:
            rt.set_state(State.STOPPED, f"exited with status {child.returncode if child else None}")
        rt.port = None
        rt.ctx, rt.profile, rt.internal = None, (), False
        await self.planner.after_stop(rt)
        self._notify(rt)

    def _on_exit(self, rt: ModelRuntime, child: Child) -> None:
        if rt.child is not child or child.stop_requested:
            return
        if rt.state is State.READY:  # nobody asked: mark FAILED; the next request may start it again
            rt.last_error = f"llama-server for '{rt.name}' exited unexpectedly with status {child.returncode}"
            rt.last_error_tail = child.tail()
            rt.set_state(State.FAILED, rt.last_error)
            rt.cancel_idle_timer()
            rt.port = None
            self._background(self.planner.after_stop(rt))
            self._notify(rt)
            self._parked = False

    async def _run_hooks(self, name: str, rt: ModelRuntime, *args: Any) -> None:
        for hook in self.hooks:
            try:
                await getattr(hook, name)(rt, *args)
            except Exception:  # a hook never fails a load or a stop
                log.exception("hook_failed", hook=type(hook).__name__, event=name, model=rt.name)

    def _notify(self, rt: ModelRuntime) -> None:
        self._kick()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = llama_session()
        return self._http

    # ---- idle unload (keep_alive) -------------------------------------------------------

    def _keep_alive_s(self, rt: ModelRuntime) -> float | None:
        if rt.keep_alive_s is not None:
            return None if rt.keep_alive_s < 0 else rt.keep_alive_s
        default = (
            rt.config.keep_alive
            if rt.config.keep_alive is not None
            else self.config.settings.supervisor.keep_alive
        )
        seconds = parse_keep_alive(default)
        return None if seconds < 0 else seconds

    def _arm_idle_timer(self, rt: ModelRuntime) -> None:
        rt.cancel_idle_timer()
        if rt.state is not State.READY or rt.inflight > 0 or rt.config.pinned:
            return
        seconds = self._keep_alive_s(rt)
        if seconds is None:
            return
        rt.idle_deadline_wall = time.time() + seconds
        rt.idle_timer = asyncio.get_running_loop().call_later(seconds, self._idle_expired, rt)

    def _idle_expired(self, rt: ModelRuntime) -> None:
        rt.idle_timer = None
        if rt.state is State.READY and rt.inflight == 0 and not self._closing:
            self._background(self.unload(rt.name, "idle (keep_alive expired)"))

    async def _retire(self, rt: ModelRuntime, new: ModelConfig | None) -> None:
        await self.unload(rt.name, "configuration changed" if new else "removed from models.yaml")
        if new is None:
            self.runtimes.pop(rt.name, None)
        else:
            rt.config = new
