"""The maintenance window: when the benchmark suite may run on its own, and the services
that make way for it.

`window_start` and `decide` are pure (the clock is an argument). The `Maintenance`
controller applies decisions: entering stops settings.services_to_stop (in the listed order,
through maintenance.service_command, `systemctl` by default) and starts a benchmark run;
leaving (window over, run finished, stopped by hand, supervisor stopping) starts them again
in reverse order. What was stopped is written to data/maintenance_state.json *before* each
stop, so after a crash the next supervisor start brings those services back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Protocol

import structlog

from shared.atomic import read_json, write_json_atomic
from shared.config import DAYS, Schedule, Settings
from shared.errors import GuardianError

log = structlog.get_logger("maintenance")

SERVICE_TIMEOUT_S = 120.0


# ---- pure: the window and the decision ----------------------------------------------------


def window_bounds(day: date, s: Schedule, tz: Any = None) -> tuple[datetime, datetime]:
    """The window that opens on `day`: end_hour at or before start_hour runs past midnight."""
    midnight = datetime.combine(day, dtime(), tzinfo=tz)
    end_hour = s.end_hour if s.end_hour > s.start_hour else s.end_hour + 24
    return midnight + timedelta(hours=s.start_hour), midnight + timedelta(hours=end_hour)


def window_start(now: datetime, s: Schedule) -> datetime | None:
    """When the window occurrence containing `now` (local time) opened; None outside it.
    `days` names the day a window opens on; equal start and end hours mean no window."""
    if s.start_hour == s.end_hour:
        return None
    for back in (0, 1):
        day = now.date() - timedelta(days=back)
        if DAYS[day.weekday()] not in s.days:
            continue
        start, end = window_bounds(day, s, now.tzinfo)
        if start <= now < end:
            return start
    return None


def next_window_start(now: datetime, s: Schedule) -> datetime | None:
    """The next time the window opens after `now`, or None if it never does."""
    if s.start_hour == s.end_hour:
        return None
    for ahead in range(9):
        day = now.date() + timedelta(days=ahead)
        if DAYS[day.weekday()] in s.days:
            start, _ = window_bounds(day, s, now.tzinfo)
            if start > now:
                return start
    return None


@dataclass(frozen=True)
class Inputs:
    now: datetime
    schedule: Schedule
    enabled: bool  # maintenance.enabled
    active: bool  # in maintenance now
    source: str | None  # "window" or "manual" while active
    last_window: str | None  # the window occurrence that already had its run (ISO start)
    idle_for_s: float  # since the last user request
    idle_needed_s: float  # benchmark.idle_minutes
    user_busy: bool  # a user holds a lease or waits for one
    bench_active: bool  # a benchmark run is working (or paused, waiting for quiet)
    bench_resumable: bool  # a window run was cut short by a supervisor crash or restart


@dataclass(frozen=True)
class Decision:
    action: str  # enter | leave | wait | none
    reason: str
    window: str | None = None


def decide(i: Inputs) -> Decision:
    start = window_start(i.now, i.schedule)
    key = start.isoformat() if start else None
    if i.active:
        if i.source == "window" and start is None:
            return Decision("leave", "the maintenance window is over")
        if not i.bench_active:
            return Decision("leave", "the benchmark run is over")
        return Decision("none", "in maintenance: the benchmark is running")
    if not i.enabled:
        return Decision("none", "maintenance.enabled is false")
    if start is None:
        return Decision("none", "outside the maintenance window")
    if key == i.last_window and not i.bench_resumable:
        return Decision("none", "the suite already ran in this window", key)
    if i.bench_active:
        return Decision("none", "a benchmark run started by hand is in progress", key)
    if i.user_busy:
        return Decision("wait", "a user request is in flight", key)
    if i.idle_for_s < i.idle_needed_s:
        left = i.idle_needed_s - i.idle_for_s
        return Decision("wait", f"waiting for the proxy to be idle ({left:.0f} s more)", key)
    return Decision("enter", f"window open and idle for {i.idle_for_s / 60:.1f} min", key)


# ---- effects ------------------------------------------------------------------------------


class ServiceRunner(Protocol):
    async def __call__(self, action: str, unit: str) -> int:
        """Run the service command for `unit` (is-active, stop or start); its exit status."""
        ...


class CommandServiceRunner:
    """[*maintenance.service_command, action, unit] as a subprocess (never a shell)."""

    def __init__(self, command: Callable[[], tuple[str, ...]], timeout_s: float = SERVICE_TIMEOUT_S) -> None:
        self.command = command
        self.timeout_s = timeout_s

    async def __call__(self, action: str, unit: str) -> int:
        argv = [*self.command(), action, unit]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as e:
            log.error("service_command_failed", argv=argv, error=str(e))
            return 127
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("service_command_timed_out", argv=argv, timeout_s=self.timeout_s)
            return 124
        rc = proc.returncode if proc.returncode is not None else 1
        text = out.decode(errors="replace").strip()[-500:]
        if action == "is-active":
            log.debug("service_command", argv=argv, rc=rc, output=text)
        else:
            (log.info if rc == 0 else log.warning)("service_command", argv=argv, rc=rc, output=text)
        return rc


class BenchControl(Protocol):
    """What the window needs from the benchmark suite."""

    on_end: list[Callable[[dict[str, Any]], None]]

    @property
    def active(self) -> bool: ...

    def interrupted_source(self) -> str | None: ...

    async def start(self, models: list[str] | None, source: str, new: bool = False) -> dict[str, Any]: ...

    async def stop(self, reason: str = ...) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


def _empty_state() -> dict[str, Any]:
    return {
        "active": False,
        "source": None,
        "since": None,
        "reason": None,
        "stopped": [],
        "window": None,
        "last_window": None,
        "events": [],
    }


class Maintenance:
    def __init__(
        self,
        path: Path,
        settings: Callable[[], Settings],
        runner: ServiceRunner,
        bench: BenchControl,
        activity: Any,  # benchmark.UserActivity: quiet_for()
        user_busy: Callable[[], bool],
        now: Callable[[], datetime] = datetime.now,
        interval_s: float = 30.0,
    ) -> None:
        self.path, self.settings, self.runner, self.bench = path, settings, runner, bench
        self.activity, self.user_busy, self.now, self.interval_s = activity, user_busy, now, interval_s
        self.state = _empty_state()
        self.last_decision = Decision("none", "not checked yet")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        bench.on_end.append(self._bench_ended)

    @property
    def active(self) -> bool:
        return bool(self.state["active"])

    async def load(self) -> None:
        state = await asyncio.to_thread(read_json, self.path, None)
        self.state = {**_empty_state(), **(state if isinstance(state, dict) else {})}

    async def start(self) -> None:
        """Load the state; in the background, restore services a crash left stopped, then
        check the window every interval_s."""
        await self.load()
        self._task = asyncio.create_task(self._main())

    async def _main(self) -> None:
        if self.state["stopped"]:
            await self.restore()
        while True:
            try:
                await self.tick()
            except Exception:  # keep checking: a bad moment must not end the window logic
                log.exception("maintenance_tick_failed")
            await asyncio.sleep(self.interval_s)

    async def restore(self) -> None:
        """Start services the state says are stopped (we are not in maintenance: we just
        started), e.g. after the supervisor crashed in the middle of a window."""
        async with self._lock:
            units = list(self.state["stopped"])
            log.warning("maintenance_restoring_services", services=units, was_active=self.state["active"])
            failed = await self._start_units(units)
            self._event("restored", "supervisor started with services stopped", units)
            self.state.update(active=False, source=None, window=None, stopped=failed)
            await self._save()

    async def close(self) -> None:
        """Supervisor stopping: no more checks; services come back (the run resumes later)."""
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        async with self._lock:
            if self.active:
                await self._leave("the supervisor is stopping", stop_bench=False)

    def inputs(self) -> Inputs:
        s = self.settings()
        return Inputs(
            now=self.now(),
            schedule=s.benchmark.schedule,
            enabled=s.maintenance.enabled,
            active=self.active,
            source=self.state["source"],
            last_window=self.state["last_window"],
            idle_for_s=self.activity.quiet_for(),
            idle_needed_s=s.benchmark.idle_minutes * 60,
            user_busy=self.user_busy(),
            bench_active=self.bench.active,
            bench_resumable=self.bench.interrupted_source() == "maintenance",
        )

    async def tick(self) -> Decision:
        async with self._lock:
            d = decide(self.inputs())
            if d != self.last_decision:
                log.debug("maintenance_decision", action=d.action, reason=d.reason)
            self.last_decision = d
            if d.action == "enter":
                await self._enter("window", d.reason, d.window)
            elif d.action == "leave":
                await self._leave(d.reason)
            return d

    async def enter(self, reason: str = "started by hand") -> dict[str, Any]:
        async with self._lock:
            if not self.active:
                await self._enter("manual", reason, None)
        return self.status()

    async def leave(self, reason: str = "stopped by hand") -> dict[str, Any]:
        async with self._lock:
            await self._leave(reason)
        return self.status()

    async def _enter(self, source: str, reason: str, window: str | None) -> None:
        units = list(self.settings().services_to_stop)
        self.state.update(
            active=True, source=source, since=time.time(), reason=reason, stopped=[], window=window
        )
        if window is not None:
            self.state["last_window"] = window
        await self._save()
        log.info("maintenance_entered", source=source, reason=reason, services=units)
        for unit in units:
            if await self.runner("is-active", unit) != 0:
                log.info("maintenance_service_left_alone", service=unit, why="it is not running")
                continue
            self.state["stopped"].append(unit)
            await self._save()  # remembered before it is stopped: a crash now still restarts it
            if await self.runner("stop", unit) != 0:
                log.warning("maintenance_service_stop_failed", service=unit)
        self._event("entered", reason, list(self.state["stopped"]))
        await self._save()
        if self.bench.active:
            log.info("maintenance_adopts_run", run=self.bench.status().get("run_id"))
            return
        try:
            await self.bench.start(None, "maintenance")
        except GuardianError as e:
            log.warning("maintenance_bench_not_started", error=e.message)
            await self._leave(f"the benchmark could not start: {e.message}")

    async def _leave(self, reason: str, stop_bench: bool = True) -> None:
        if not self.active:
            return
        if stop_bench and self.bench.active:
            await self.bench.stop(f"maintenance ended: {reason}")
        units = list(self.state["stopped"])
        failed = await self._start_units(units)
        self._event("left", reason, units)
        self.state.update(active=False, source=None, window=None, reason=reason, stopped=failed)
        await self._save()
        log.info("maintenance_left", reason=reason, services_started=[u for u in units if u not in failed])

    async def _start_units(self, units: list[str]) -> list[str]:
        """Start in reverse order of stopping; return those that failed (kept for a retry)."""
        failed = []
        for unit in reversed(units):
            if await self.runner("start", unit) != 0:
                log.error("maintenance_service_start_failed", service=unit)
                failed.append(unit)
        return list(reversed(failed))

    def _bench_ended(self, bench_status: dict[str, Any]) -> None:
        if self.active:
            self._background(self.leave(f"benchmark run {bench_status.get('status')}"))

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, what: str, reason: str, services: list[str]) -> None:
        events = self.state.setdefault("events", [])
        events.append({"event": what, "reason": reason, "services": services, "at": time.time()})
        del events[:-20]

    async def _save(self) -> None:
        snapshot = {
            **self.state,
            "stopped": list(self.state["stopped"]),
            "events": list(self.state["events"]),
        }
        await asyncio.to_thread(write_json_atomic, self.path, snapshot)

    def status(self) -> dict[str, Any]:
        s = self.settings()
        i = self.inputs()
        start, nxt = window_start(i.now, i.schedule), next_window_start(i.now, i.schedule)
        bench = self.bench.status()
        return {
            **{k: self.state[k] for k in ("active", "source", "since", "reason", "stopped", "last_window")},
            "events": self.state["events"][-5:],
            "enabled": s.maintenance.enabled,
            "services_to_stop": list(s.services_to_stop),
            "service_command": list(s.maintenance.service_command),
            "schedule": asdict(s.benchmark.schedule),
            "now": i.now.isoformat(timespec="seconds"),
            "in_window": start is not None,
            "window_start": start.isoformat() if start else None,
            "next_window": nxt.isoformat() if nxt else None,
            "idle_for_s": round(i.idle_for_s, 1),
            "idle_needed_s": i.idle_needed_s,
            "decision": asdict(decide(i)),
            "benchmark": {k: bench.get(k) for k in ("status", "run_id", "source", "done", "total")},
        }
