"""The maintenance window through the real supervisor, with a stand-in for systemctl (a script
that logs its arguments) and the fake llama-server. The window's timing rules are unit-tested
with an injected clock (tests/unit/test_maintenance.py)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.harness import write_fake_config

pytestmark = pytest.mark.timeout(90)

UNITS = ["svc-a", "svc-b", "svc-c"]
STOPPED = [("is-active", u) for u in UNITS]
STOPS = [x for u in UNITS for x in (("is-active", u), ("stop", u))]
STARTS = [("start", u) for u in reversed(UNITS)]


@pytest.fixture
def maint(guardian_factory, model_dir, tmp_path):
    """make(load_delay_s) → (Guardian with services_to_stop and a logging service command, log)."""
    calls = tmp_path / "systemctl.log"
    script = tmp_path / "fake-systemctl"
    script.write_text('#!/bin/sh\nlog="$1"; shift\necho "$*" >> "$log"\n')
    script.chmod(0o755)
    cfg = tmp_path / "fake.json"

    def make(load_delay_s: float = 0.0):
        write_fake_config(cfg, {"load_delay_s": load_delay_s} if load_delay_s else {})
        g = guardian_factory(
            {"fa": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512}},
            {
                "services_to_stop": UNITS,
                # Manual only: the window's own runs are for the unit tests' clock.
                "maintenance": {"service_command": [str(script), str(calls)], "enabled": False},
                "benchmark": {
                    "contexts": [256],
                    "batch_sizes": [64],
                    "ubatch_sizes": [64],
                    "prompt_tokens": 16,
                    "gen_tokens": 4,
                    "repetitions": 1,
                    "idle_minutes": 0.01,
                },
            },
            {"FAKE_LLAMA_CONFIG": str(cfg)},
            start="guardian-supervisor",
        )
        return g, calls

    return make


def calls_of(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]  # type: ignore[misc]


def wait_for(pred, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_start_stop_calls_the_service_command_in_order(maint):
    g, calls = maint(load_delay_s=30)  # the run sits in a load: maintenance stays on
    r = g.ctl("maintenance", "start", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["active"] and st["source"] == "manual" and st["stopped"] == UNITS
    assert calls_of(calls) == STOPS, "each unit checked, then stopped, in the listed order"
    assert g.rpc("bench.status")["status"] == "running"
    saved = json.loads((g.root / "data" / "maintenance_state.json").read_text())
    assert saved["active"] and saved["stopped"] == UNITS
    assert "IN MAINTENANCE" in g.ctl("maintenance", "status").stdout

    r = g.ctl("maintenance", "stop", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert not st["active"] and st["stopped"] == []
    assert calls_of(calls) == STOPS + STARTS, "started again in reverse order"
    assert g.rpc("bench.status")["status"] == "stopped"


def test_services_come_back_after_a_supervisor_crash(maint):
    g, calls = maint(load_delay_s=30)
    assert g.ctl("maintenance", "start").returncode == 0
    assert calls_of(calls) == STOPS
    g.stop("guardian-supervisor", signal.SIGKILL)
    saved = json.loads((g.root / "data" / "maintenance_state.json").read_text())
    assert saved["active"] and saved["stopped"] == UNITS, "what was stopped is on disk"

    g.start("guardian-supervisor")
    wait_for(lambda: len(calls_of(calls)) >= len(STOPS) + 3, what="the services to be started")
    assert calls_of(calls) == STOPS + STARTS
    state_file = g.root / "data" / "maintenance_state.json"
    wait_for(lambda: not json.loads(state_file.read_text())["active"], what="the state file to clear")
    assert json.loads(state_file.read_text())["stopped"] == []
    assert not g.rpc("maintenance.status")["active"]
    assert "maintenance_restoring_services" in g.log("guardian-supervisor")
    # The window's run was cut short; it waits for the next window rather than running now.
    assert g.rpc("bench.status")["status"] == "interrupted"


def test_a_finished_run_ends_maintenance(maint):
    g, calls = maint()
    assert g.ctl("maintenance", "start").returncode == 0
    wait_for(lambda: not g.rpc("maintenance.status")["active"], what="the run to end maintenance")
    st = g.rpc("bench.status")
    assert st["status"] == "finished" and st["counts"] == {"ok": 1}, st
    assert calls_of(calls) == STOPS + STARTS
    events = [e["event"] for e in g.rpc("maintenance.status")["events"]]
    assert events == ["entered", "left"]
    assert g.rpc("maintenance.status")["reason"] == "benchmark run finished"


def test_bench_stop_by_hand_ends_maintenance(maint):
    g, calls = maint(load_delay_s=30)
    assert g.ctl("maintenance", "start").returncode == 0
    r = g.ctl("bench", "stop", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "stopped"
    wait_for(lambda: len(calls_of(calls)) == len(STOPS) + 3, what="the services to be started")
    assert calls_of(calls) == STOPS + STARTS
