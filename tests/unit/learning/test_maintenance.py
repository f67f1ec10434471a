"""The maintenance window with an injected clock: pure rules, then the controller with fakes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from guardian_supervisor.learning.maintenance import (
    Inputs,
    Maintenance,
    decide,
    next_window_start,
    window_start,
)
from shared.config import BenchmarkSettings, MaintenanceSettings, Schedule, Settings

pytestmark = pytest.mark.timeout(20)

WEEKDAYS = Schedule(4, 11, ("mon", "tue", "wed", "thu", "fri"))
# 2025-06-02 is a Monday.
MON = datetime(2025, 6, 2)


def at(day_offset: int, hour: int, minute: int = 0) -> datetime:
    return MON + timedelta(days=day_offset, hours=hour, minutes=minute)


@pytest.mark.parametrize(
    ("now", "start"),
    [
        (at(0, 3, 59), None),
        (at(0, 4), at(0, 4)),
        (at(0, 10, 59), at(0, 4)),
        (at(0, 11), None),
        (at(4, 5), at(4, 4)),  # friday
        (at(5, 5), None),  # saturday
        (at(6, 5), None),  # sunday
    ],
)
def test_weekday_window(now, start):
    assert window_start(now, WEEKDAYS) == start


def test_overnight_window_belongs_to_the_day_it_opens():
    s = Schedule(22, 6, ("fri",))
    assert window_start(at(4, 23), s) == at(4, 22)  # friday night
    assert window_start(at(5, 5, 59), s) == at(4, 22), "saturday morning is friday's window"
    assert window_start(at(5, 6), s) is None
    assert window_start(at(5, 23), s) is None, "saturday night is not listed"
    assert window_start(at(4, 5), s) is None, "friday morning belongs to thursday, not listed"


def test_whole_day_and_empty_windows():
    assert window_start(at(0, 0), Schedule(0, 24, ("mon",))) == at(0, 0)
    assert window_start(at(0, 23, 59), Schedule(0, 24, ("mon",))) == at(0, 0)
    assert window_start(at(0, 5), Schedule(5, 5, ("mon",))) is None
    assert next_window_start(at(0, 5), Schedule(5, 5, ("mon",))) is None


def test_next_window_start():
    assert next_window_start(at(0, 3), WEEKDAYS) == at(0, 4)
    assert next_window_start(at(0, 5), WEEKDAYS) == at(1, 4)
    assert next_window_start(at(4, 12), WEEKDAYS) == at(7, 4), "friday afternoon → monday"
    assert next_window_start(at(0, 5), Schedule(4, 11, ())) is None


def inputs(**over: Any) -> Inputs:
    base = dict(
        now=at(0, 5),
        schedule=WEEKDAYS,
        enabled=True,
        active=False,
        source=None,
        last_window=None,
        idle_for_s=700.0,
        idle_needed_s=600.0,
        user_busy=False,
        bench_active=False,
        bench_resumable=False,
    )
    return Inputs(**{**base, **over})


def test_decide():
    key = at(0, 4).isoformat()
    assert decide(inputs()).action == "enter" and decide(inputs()).window == key
    assert decide(inputs(now=at(0, 12))).action == "none"
    assert decide(inputs(enabled=False)).action == "none"
    assert decide(inputs(idle_for_s=10)).action == "wait"
    assert decide(inputs(user_busy=True)).action == "wait"
    assert decide(inputs(bench_active=True)).action == "none", "a run started by hand is left alone"
    assert decide(inputs(last_window=key)).action == "none", "one run per window"
    assert decide(inputs(last_window=key, bench_resumable=True)).action == "enter", "after a crash"
    assert decide(inputs(last_window=at(-3, 4).isoformat())).action == "enter", "a new window"
    active = dict(active=True, source="window", bench_active=True)
    assert decide(inputs(**active)).action == "none"
    assert decide(inputs(**active, now=at(0, 11))).action == "leave"
    assert decide(inputs(**{**active, "bench_active": False})).action == "leave"
    assert decide(inputs(active=True, source="manual", bench_active=True, now=at(0, 20))).action == "none"


# ---- the controller ----------------------------------------------------------------------


class FakeRunner:
    def __init__(self, inactive: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.inactive = inactive

    async def __call__(self, action: str, unit: str) -> int:
        self.calls.append((action, unit))
        return 3 if action == "is-active" and unit in self.inactive else 0

    def actions(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] != "is-active"]


class FakeBench:
    def __init__(self) -> None:
        self.on_end: list[Any] = []
        self.running = False
        self.resumable: str | None = None
        self.starts: list[tuple[Any, str]] = []
        self.stops: list[str] = []

    @property
    def active(self) -> bool:
        return self.running

    def interrupted_source(self) -> str | None:
        return self.resumable

    async def start(self, models: Any, source: str, new: bool = False) -> dict[str, Any]:
        self.starts.append((models, source))
        self.running = True
        self.resumable = None
        return self.status()

    async def stop(self, reason: str = "") -> dict[str, Any]:
        self.stops.append(reason)
        self.running = False
        for cb in self.on_end:
            cb({"status": "stopped"})
        return self.status()

    def finish(self) -> None:
        self.running = False
        for cb in self.on_end:
            cb({"status": "finished"})

    def status(self) -> dict[str, Any]:
        return {"status": "running" if self.running else "idle", "run_id": None}


class Quiet:
    def __init__(self, s: float) -> None:
        self.s = s

    def quiet_for(self) -> float:
        return self.s


class Now:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


SETTINGS = Settings(
    benchmark=BenchmarkSettings(schedule=WEEKDAYS, idle_minutes=10),
    services_to_stop=("svc-a", "svc-b", "svc-c"),
    maintenance=MaintenanceSettings(service_command=("true",), enabled=True),
)


def make(tmp_path, now: datetime = at(0, 5), quiet: float = 700.0, runner=None):
    clock, q, bench = Now(now), Quiet(quiet), FakeBench()
    runner = runner or FakeRunner()
    m = Maintenance(
        tmp_path / "maintenance_state.json", lambda: SETTINGS, runner, bench, q, lambda: False, now=clock
    )
    return m, runner, bench, clock, q


def saved(tmp_path) -> dict[str, Any]:
    return json.loads((tmp_path / "maintenance_state.json").read_text())


async def test_window_enters_when_idle_and_leaves_when_it_closes(tmp_path):
    m, runner, bench, clock, quiet = make(tmp_path, now=at(0, 3), quiet=0)
    await m.load()
    assert (await m.tick()).action == "none"
    clock.t = at(0, 4, 1)
    assert (await m.tick()).action == "wait", "the proxy was just used"
    assert runner.calls == []
    quiet.s = 601
    assert (await m.tick()).action == "enter"
    assert runner.calls == [
        ("is-active", "svc-a"),
        ("stop", "svc-a"),
        ("is-active", "svc-b"),
        ("stop", "svc-b"),
        ("is-active", "svc-c"),
        ("stop", "svc-c"),
    ]
    assert bench.starts == [(None, "maintenance")]
    assert saved(tmp_path)["active"] and saved(tmp_path)["stopped"] == ["svc-a", "svc-b", "svc-c"]
    clock.t = at(0, 10, 59)
    assert (await m.tick()).action == "none"
    clock.t = at(0, 11)
    assert (await m.tick()).action == "leave"
    assert bench.stops and "window is over" in bench.stops[0]
    assert runner.actions()[3:] == [("start", "svc-c"), ("start", "svc-b"), ("start", "svc-a")]
    assert not saved(tmp_path)["active"] and saved(tmp_path)["stopped"] == []


async def test_run_finished_ends_maintenance_and_the_window_does_not_run_twice(tmp_path):
    m, runner, bench, clock, _q = make(tmp_path)
    await m.load()
    assert (await m.tick()).action == "enter"
    bench.finish()
    for t in list(m._tasks):
        await t
    assert not m.active
    assert runner.actions()[-3:] == [("start", "svc-c"), ("start", "svc-b"), ("start", "svc-a")]
    clock.t = at(0, 6)
    assert (await m.tick()).action == "none" and len(bench.starts) == 1
    clock.t = at(1, 5)
    assert (await m.tick()).action == "enter", "the next day's window runs again"


async def test_services_not_running_are_left_alone(tmp_path):
    m, runner, _bench, _clock, _q = make(tmp_path, runner=FakeRunner(inactive={"svc-b"}))
    await m.load()
    await m.enter()
    assert m.state["stopped"] == ["svc-a", "svc-c"]
    await m.leave()
    assert runner.actions() == [("stop", "svc-a"), ("stop", "svc-c"), ("start", "svc-c"), ("start", "svc-a")]


async def test_manual_maintenance_ignores_the_window_and_stop_by_hand(tmp_path):
    m, runner, bench, _clock, _q = make(tmp_path, now=at(5, 15))  # saturday afternoon
    await m.load()
    st = await m.enter()
    assert st["active"] and st["source"] == "manual" and bench.starts
    assert (await m.tick()).action == "none", "a manual window does not close with the schedule"
    st = await m.leave()
    assert not st["active"] and bench.stops == ["maintenance ended: stopped by hand"]
    assert runner.actions()[-1] == ("start", "svc-a")


async def test_bench_stopped_by_hand_ends_maintenance(tmp_path):
    m, runner, bench, _clock, _q = make(tmp_path)
    await m.load()
    await m.enter()
    await bench.stop("stopped by hand")
    for t in list(m._tasks):
        await t
    assert not m.active and runner.actions()[-1] == ("start", "svc-a")


async def test_crash_in_maintenance_restores_services_on_start(tmp_path):
    m, _runner, _bench, _clock, _q = make(tmp_path)
    await m.load()
    await m.enter()
    # The supervisor dies here (no leave). A new one starts:
    m2, runner2, _bench2, _clock2, _q2 = make(tmp_path, now=at(0, 20))
    await m2.load()
    assert m2.state["stopped"] == ["svc-a", "svc-b", "svc-c"]
    await m2.restore()
    assert runner2.calls == [("start", "svc-c"), ("start", "svc-b"), ("start", "svc-a")]
    assert not saved(tmp_path)["active"] and saved(tmp_path)["stopped"] == []
    assert saved(tmp_path)["events"][-1]["event"] == "restored"


async def test_crash_mid_window_reenters_to_finish_the_run(tmp_path):
    m, _runner, _bench, _clock, _q = make(tmp_path)
    await m.load()
    assert (await m.tick()).action == "enter"
    m2, _runner2, bench2, _clock2, _q2 = make(tmp_path, now=at(0, 6))
    await m2.load()
    await m2.restore()
    bench2.resumable = "maintenance"  # the run was cut short
    assert (await m2.tick()).action == "enter"
    assert bench2.starts == [(None, "maintenance")]


async def test_a_failed_start_is_kept_for_a_retry(tmp_path):
    class Failing(FakeRunner):
        async def __call__(self, action: str, unit: str) -> int:
            await super().__call__(action, unit)
            return 1 if (action, unit) == ("start", "svc-b") else 0

    m, _runner, _bench, _clock, _q = make(tmp_path, runner=Failing())
    await m.load()
    await m.enter()
    await m.leave()
    assert saved(tmp_path)["stopped"] == ["svc-b"] and not saved(tmp_path)["active"]


async def test_close_brings_services_back(tmp_path):
    m, runner, _bench, _clock, _q = make(tmp_path)
    await m.load()
    await m.enter()
    await m.close()
    assert runner.actions()[-3:] == [("start", "svc-c"), ("start", "svc-b"), ("start", "svc-a")]
    assert not saved(tmp_path)["active"]
