"""Effects of the scheduler's decisions: start a server (binary, port, argv, readiness,
hooks), stop one (hooks, SIGTERM, memory release), notice an exit nobody asked for, and
the keep_alive timers that unload idle models.

The scheduler decides *what* happens; this module does it and reports back through
callbacks: `changed` after anything that may make a waiter admissible, `idle` when a
model's keep_alive ran out, `stuck` when the health watchdog killed a server that stopped
answering with requests in flight (the scheduler starts it again).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import structlog

from guardian_supervisor.models.argv import build_argv, check_model
from guardian_supervisor.models.launcher import Child, LoadError, llama_session, make_private_dir, wait_ready
from guardian_supervisor.models.plans import Go, LifecycleHook, Planner
from guardian_supervisor.models.ports import PORT_ATTEMPTS, free_port
from guardian_supervisor.models.runtime import ModelRuntime, Profile, State
from shared.config import Config, timeouts_for
from shared.durations import parse_keep_alive
from shared.errors import Code, GuardianError

log = structlog.get_logger("lifecycle")


def resolve_binary(binary: str) -> str | None:
    """Absolute paths as given; bare names on PATH or beside this Python (the venv's bin)."""
    if os.sep in binary:
        return binary if os.access(binary, os.X_OK) else None
    search = os.pathsep.join([os.environ.get("PATH", ""), os.path.dirname(sys.executable)])
    return shutil.which(binary, path=search)


class Lifecycle:
    def __init__(
        self,
        config: Callable[[], Config],
        planner: Planner,
        runtimes: Callable[[], dict[str, ModelRuntime]],
        changed: Callable[[], None],
        idle: Callable[[ModelRuntime], None],
        stuck: Callable[[ModelRuntime], None] | None = None,
    ) -> None:
        self._config = config
        self.planner = planner
        self._runtimes = runtimes
        self._changed = changed
        self._idle = idle
        self._stuck = stuck
        self.hooks: list[LifecycleHook] = []
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    @property
    def config(self) -> Config:
        return self._config()

    # ---- start --------------------------------------------------------------------------

    def pick_port(self, avoid: set[int] | None = None) -> int:
        used = {rt.port for rt in self._runtimes().values() if rt.port is not None} | (avoid or set())
        port = free_port(self.config.settings.supervisor.port_base, used)
        if port is None:
            raise GuardianError(Code.LOAD_FAILED, "no free TCP port above supervisor.port_base")
        return port

    async def launch(
        self, rt: ModelRuntime, ctx: int, profile: Profile, plan: Go, internal: bool = False
    ) -> GuardianError | None:
        """Start `rt` and make it READY; on failure, the error its waiters should get."""
        overrides: dict[str, Any] = dict(profile)
        cfg, settings = replace(rt.config, **overrides), self.config.settings
        backend_name = self.config.backend_name(cfg)
        backend = settings.backends[backend_name]
        ngl = plan.placement.n_gpu_layers if plan.placement.n_gpu_layers is not None else cfg.ngl
        # On CPU when no layer is offloaded or the plan names no GPU for the child.
        on_cpu = ngl == 0 or not plan.env.get("CUDA_VISIBLE_DEVICES")
        problem = check_model(cfg, backend, on_cpu=on_cpu)
        binary = await asyncio.to_thread(resolve_binary, backend.binary)  # stats the filesystem
        if problem is None and binary is None:
            problem = (
                f"model '{cfg.name}': backend '{backend_name}' binary {backend.binary!r} was not found or is not executable; "
                f"install it or set backends.{backend_name}.binary in settings.yaml"
            )
        if problem is not None:
            await self.planner.after_stop(rt)
            rt.last_error = problem
            return GuardianError(
                Code.BAD_FLAG if "flag" in problem or "kv_type" in problem else Code.LOAD_FAILED,
                problem,
                {"model": cfg.name},
            )
        assert binary is not None
        rt.request_timeout_s, load_timeout = await asyncio.to_thread(timeouts_for, self.config, cfg)
        slot_dir = settings.supervisor.data_dir / "slots" / cfg.name
        rt.set_state(State.STARTING, "requested")
        rt.last_error, rt.last_error_tail = None, []
        t0 = time.monotonic()
        env = {**os.environ, **plan.env} if plan.env else None  # None: inherit ours
        child: Child | None = None
        try:
            await asyncio.to_thread(make_private_dir, slot_dir)
            taken: set[int] = set()
            for attempt in range(1, PORT_ATTEMPTS + 1):
                rt.port = self.pick_port(taken)
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
                    port=rt.port,
                    key_dir=settings.supervisor.data_dir / "run" / "keys",
                    # ik writes llama.log into its working directory: one per model, in the data dir.
                    cwd=settings.supervisor.data_dir / "run" / cfg.name if backend.flavor == "ik" else None,
                )
                child.on_exit = lambda c: self._on_exit(rt, c)
                rt.child = child
                await child.start(env)
                try:
                    await wait_ready(
                        child,
                        f"http://127.0.0.1:{rt.port}",
                        self.session(),
                        load_timeout,
                        settings.supervisor.health_poll_ms / 1000,
                    )
                    break
                except LoadError as e:
                    # Another process took the port between our check and llama-server's bind.
                    if attempt == PORT_ATTEMPTS or e.timed_out or not any("bind" in line for line in e.tail):
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
            return GuardianError(code, msg, {"model": cfg.name, "log_tail": tail[-10:]})
        except asyncio.CancelledError:
            if child is not None:
                await child.stop(0)
            raise
        rt.ctx, rt.profile, rt.internal = ctx, profile, internal
        await self._run_hooks("model_started", rt)
        rt.load_s = time.monotonic() - t0
        rt.set_state(State.READY, f"healthy after {rt.load_s * 1000:.0f} ms")
        self.planner.after_ready(rt, ctx)
        self._changed()
        self.arm_idle_timer(rt)
        if settings.supervisor.health_watchdog_s > 0 and child is not None:
            self.background(self._watch(rt, child, settings.supervisor.health_watchdog_s))
        return None

    # ---- stop ---------------------------------------------------------------------------

    async def stop(self, rt: ModelRuntime, reason: str) -> None:
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
        self._changed()

    def _on_exit(self, rt: ModelRuntime, child: Child) -> None:
        if rt.child is not child or child.stop_requested:
            return
        if rt.state is State.READY:  # nobody asked: mark FAILED; the next request may start it again
            rt.last_error = f"llama-server for '{rt.name}' exited unexpectedly with status {child.returncode}"
            rt.last_error_tail = child.tail()
            rt.set_state(State.FAILED, rt.last_error)
            rt.cancel_idle_timer()
            rt.port = None
            self.background(self.planner.after_stop(rt))
            self._changed()

    # ---- health watchdog ----------------------------------------------------------------

    async def _watch(self, rt: ModelRuntime, child: Child, limit_s: float) -> None:
        """While `child` serves requests, it must answer /health; silent for `limit_s` → killed.

        A stopped (SIGSTOP) or deadlocked llama-server keeps its socket open, so its clients
        would each wait out the whole request timeout while the model still looks READY.
        Probes run only while requests are in flight: an idle server costs nothing. ik answers
        /health through its task queue, so a long prompt batch delays it: hence seconds, not
        one missed probe.
        """
        every = min(5.0, max(0.2, limit_s / 6))
        probe = aiohttp.ClientTimeout(total=every)
        url = f"http://127.0.0.1:{rt.port}/health"
        last_ok = time.monotonic()
        while rt.child is child and rt.state is State.READY and child.returncode is None:
            await asyncio.sleep(every)
            if rt.child is not child or rt.state is not State.READY:
                return
            if rt.inflight == 0:
                last_ok = time.monotonic()
                continue
            try:
                async with self.session().get(url, timeout=probe) as resp:
                    if resp.status < 500:
                        last_ok = time.monotonic()
                        continue
            except (aiohttp.ClientError, TimeoutError):
                pass
            silent = time.monotonic() - last_ok
            if silent >= limit_s and rt.child is child and rt.state is State.READY:
                self._kill_stuck(rt, child, silent)
                return

    def _kill_stuck(self, rt: ModelRuntime, child: Child, silent_s: float) -> None:
        rt.last_error = (
            f"llama-server for '{rt.name}' stopped answering /health for {silent_s:.0f} s with "
            f"{rt.inflight} request(s) in flight; killed it (supervisor.health_watchdog_s="
            f"{self.config.settings.supervisor.health_watchdog_s:g}) and starting it again"
        )
        log.error("llama_server_stuck", model=rt.name, pid=child.pid, silent_s=round(silent_s, 1))
        rt.last_restart = {"at": time.time(), "reason": rt.last_error}
        rt.last_error_tail = child.tail()
        rt.set_state(State.FAILED, rt.last_error)
        rt.cancel_idle_timer()
        rt.port = None
        child.kill_now()  # SIGKILL ends a stopped process too; its clients' connections reset
        self.background(self.planner.after_stop(rt))
        self._changed()
        if self._stuck is not None:
            self._stuck(rt)

    def kill_all_now(self) -> None:
        for rt in self._runtimes().values():
            if rt.child is not None:
                rt.child.kill_now()

    # ---- idle unload (keep_alive) -------------------------------------------------------

    def keep_alive_s(self, rt: ModelRuntime) -> float | None:
        if rt.keep_alive_s is not None:
            return None if rt.keep_alive_s < 0 else rt.keep_alive_s
        default = (
            rt.config.keep_alive
            if rt.config.keep_alive is not None
            else self.config.settings.supervisor.keep_alive
        )
        seconds = parse_keep_alive(default)
        return None if seconds < 0 else seconds

    def arm_idle_timer(self, rt: ModelRuntime) -> None:
        rt.cancel_idle_timer()
        if rt.state is not State.READY or rt.inflight > 0 or rt.config.pinned:
            return
        seconds = self.keep_alive_s(rt)
        if seconds is None:
            return
        rt.idle_deadline_wall = time.time() + seconds
        rt.idle_timer = asyncio.get_running_loop().call_later(seconds, self._idle_expired, rt)

    def _idle_expired(self, rt: ModelRuntime) -> None:
        rt.idle_timer = None
        if rt.state is State.READY and rt.inflight == 0 and not self.closing:
            self._idle(rt)

    # ---- plumbing -----------------------------------------------------------------------

    async def _run_hooks(self, name: str, rt: ModelRuntime, *args: Any) -> None:
        for hook in self.hooks:
            try:
                await getattr(hook, name)(rt, *args)
            except Exception:  # a hook never fails a load or a stop
                log.exception("hook_failed", hook=type(hook).__name__, event=name, model=rt.name)

    def background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = llama_session()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
