"""The benchmark suite and the request optimizer end to end: the real llama-server, tiny models,
real processes (small grids and token counts, so each test takes seconds)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardian_supervisor.learning.bench_plan import Cell

pytestmark = pytest.mark.timeout(120)


def settings(**bench: Any) -> dict[str, Any]:
    return {
        "benchmark": {
            "contexts": [256, 512],
            "batch_sizes": [64, 128],
            "ubatch_sizes": [64],
            "prompt_tokens": 32,
            "gen_tokens": 8,
            "repetitions": 2,
            "idle_minutes": 0.01,
            **bench,
        },
        # The window would start runs of its own if a test ran on a weekday morning.
        "maintenance": {"enabled": False},
    }


def history(g) -> list[dict[str, Any]]:
    path = Path(g.root) / "data" / "benchmark_history.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def wait_status(g, want: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = g.rpc("bench.status")
        if st["status"] == want:
            return st
        assert time.monotonic() < deadline, (
            f"benchmark never became {want}: {st['status']}\n{g.log()[-3000:]}"
        )
        time.sleep(0.05)


def chat(g, model: str, text: str = "hi", max_tokens: int = 4) -> httpx.Response:
    return httpx.post(
        g.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens},
        timeout=60,
    )


def test_full_run_over_two_models_with_records(guardian_factory):
    g = guardian_factory(settings=settings(), start=None)
    # An older, slower record for demo-a: this run must beat it and say so.
    old = {
        "value": 0.5,
        "settings": {"ctx": 128, "batch_size": 32, "ubatch_size": 32},
        "run_id": "old",
        "at": 1.0,
    }
    (g.root / "data").mkdir(parents=True)
    (g.root / "data" / "benchmark_records.json").write_text(
        json.dumps({"best": {"demo-a": {"gen_tps": old, "prompt_tps": old}}, "events": []})
    )
    g.start("guardian-supervisor")
    r = g.ctl("bench", "run", "--wait", "--json")
    assert r.returncode == 0, r.stderr + g.log("guardian-supervisor")[-3000:]
    st = json.loads(r.stdout)
    assert st["status"] == "finished" and st["total"] == st["done"] == 8
    assert st["counts"] == {"ok": 8}

    lines = history(g)
    assert len(lines) == 8 and {x["run_id"] for x in lines} == {st["run_id"]}
    assert {(x["model"], x["ctx"], x["batch_size"]) for x in lines} == {
        (m, c, b) for m in ("demo-a", "demo-b") for c in (256, 512) for b in (64, 128)
    }
    for x in lines:
        assert x["prompt_tps"] > 0 and x["gen_tps"] > 0 and x["prompt_n"] == 32 and x["predicted_n"] == 8
        assert x["load_s"] is not None and x["load_s"] > 0
        assert x["memory"]["estimate_mib"] >= 1, x["memory"]
    state = json.loads((g.root / "data" / "benchmark_state.json").read_text())
    assert state["status"] == "finished" and len(state["done"]) == 8

    rec = json.loads(g.ctl("bench", "records", "--json").stdout)
    a_gen = [e for e in rec["events"] if e["model"] == "demo-a" and e["metric"] == "gen_tps"]
    assert a_gen[0]["old"] == 0.5 and a_gen[0]["new"] > 0.5
    assert a_gen[0]["old_settings"] == old["settings"] and a_gen[0]["settings"]["ctx"] in (256, 512)
    b_first = next(e for e in rec["events"] if e["model"] == "demo-b")
    assert b_first["old"] is None, "a model's first figure is its first record"
    best_b = max(x["gen_tps"] for x in lines if x["model"] == "demo-b")
    assert rec["best"]["demo-b"]["gen_tps"]["value"] == best_b
    log = g.log("guardian-supervisor")
    assert "🏆 demo-a: best generation speed 0.5 →" in log
    assert "🏆" in g.ctl("bench", "records").stdout

    # The servers launched with benchmark settings do not stay around for users.
    assert {m["name"]: m["state"] for m in g.status()["models"]} == {"demo-a": "STOPPED", "demo-b": "STOPPED"}
    human = g.ctl("bench", "status").stdout
    assert "finished, 8/8 cells" in human and "demo-b" in human


def test_killed_halfway_resumes_without_repeating_or_losing_cells(guardian_factory):
    g = guardian_factory(settings=settings(contexts=[256, 512, 1024], gen_tokens=16), start=None)
    g.start("guardian-supervisor")
    st = g.rpc("bench.run", {})
    total = st["total"]
    assert total == 12
    deadline = time.monotonic() + 60
    while len(history(g)) < 4:
        assert time.monotonic() < deadline, g.log("guardian-supervisor")[-3000:]
        time.sleep(0.005)
    g.stop("guardian-supervisor", signal.SIGKILL)
    before = history(g)
    assert 4 <= len(before) < total, "killed halfway"
    state = json.loads((g.root / "data" / "benchmark_state.json").read_text())
    assert state["status"] == "running" and state["run_id"] == st["run_id"]
    deadline = time.monotonic() + 10
    while g.child_pids():  # llama-servers die with their supervisor
        assert time.monotonic() < deadline, "a llama-server outlived the supervisor"
        time.sleep(0.05)

    g.start("guardian-supervisor")
    after_st = wait_status(g, "finished")
    assert after_st["run_id"] == st["run_id"] and after_st["done"] == total
    after = history(g)
    assert after[: len(before)] == before, "finished cells were neither lost nor rewritten"
    keys = [Cell.from_dict(x).key for x in after]
    assert len(keys) == total == len(set(keys)), "no cell ran twice"
    assert "benchmark_resuming" in g.log("guardian-supervisor")


def test_user_request_wins_and_the_run_resumes(guardian_factory):
    # One model at a time: the user's model can only load once the benchmark lets go.
    g = guardian_factory(
        settings={
            **settings(contexts=[256, 512, 1024], gen_tokens=32, idle_minutes=0.05),
            "max_loaded_models": 1,
        }
    )
    st = g.rpc("bench.run", {"models": ["demo-a"]})
    assert st["total"] == 6
    deadline = time.monotonic() + 60
    while not history(g):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    t0 = time.monotonic()
    r = chat(g, "demo-b")
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "demo-b"
    assert took < 10, f"the user waited {took:.1f} s"
    st = g.rpc("bench.status")
    assert st["status"] == "paused" and st["done"] < 6, st["status"]
    assert g.model("demo-b")["state"] == "READY"

    st = wait_status(g, "finished")
    assert st["done"] == 6 and st["counts"] == {"ok": 6}
    keys = [Cell.from_dict(x).key for x in history(g)]
    assert len(keys) == 6 == len(set(keys)), "every cell exactly once"
    deadline = time.monotonic() + 10  # the status can say finished before the line is written
    while "benchmark_finished" not in (log := g.log()):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.05)
    assert "benchmark_paused" in log
    assert log.index("benchmark_paused") < log.index("benchmark_finished")


def test_optimizer_fills_the_context_only_when_none_is_given(guardian_factory):
    g = guardian_factory(
        settings={
            **settings(contexts=[256, 512], batch_sizes=[64], ubatch_sizes=[64]),
            "optimizer": {"min_samples": 2},
        }
    )
    r = g.ctl("bench", "run", "demo-a", "--wait", "--json")
    assert r.returncode == 0, r.stderr
    # Users talk to demo-a; their conversation lengths are sampled after each request.
    for i in range(2):
        assert chat(g, "demo-a", f"hello number {i}").status_code == 200
        deadline = time.monotonic() + 10
        while g.rpc("optimizer.show", {"model": "demo-a"})[0]["samples"] < i + 1:
            assert time.monotonic() < deadline, "the conversation length was not sampled"
            time.sleep(0.1)
    shown = g.rpc("optimizer.show", {"model": "demo-a"})[0]
    learned = shown["ctx"]
    assert learned in (256, 512), shown["ctx_why"]
    assert shown["ctx_source"]["ctx"] == learned and shown["profile"] == {"batch_size": 64, "ubatch_size": 64}
    assert "longest conversation seen" in shown["ctx_why"]
    text = g.ctl("optimizer", "show", "demo-a").stdout
    assert f"context: {learned}" in text and "why:" in text and "from: run" in text

    g.rpc("models.unload", {"model": "demo-a"})
    g.rpc("models.acquire", {"model": "demo-a"})  # no ctx: the learned one
    m = g.model("demo-a")
    assert m["ctx"] == learned
    assert m["argv"][m["argv"].index("-b") + 1] == "64"

    g.rpc("models.unload", {"model": "demo-a"})
    g.rpc("models.acquire", {"model": "demo-a", "ctx": 1024})  # the client's value wins
    assert g.model("demo-a")["ctx"] == 1024

    r = g.ctl("optimizer", "reset", "demo-a", "--json")
    assert json.loads(r.stdout) == {"reset": ["demo-a"]}
    after = g.rpc("optimizer.show", {"model": "demo-a"})[0]
    assert after["ctx"] is None and after["samples"] == 0 and after["profile"] == {}


def test_a_cell_that_does_not_fit_is_recorded_not_retried(guardian_factory, model_dir):
    # A simulated 30 MiB GPU: demo-b needs ~13 MiB at context 1024 and ~43 MiB at 16384.
    sim = {
        "mode": "simulated",
        "simulated": [{"name": "sim0", "total_mb": 30, "used_mb": 0}],
        "reserve_mb": 0,
        "overhead_mb": 0,
    }
    g = guardian_factory(
        # offload: strict, or the 16384 cell would run partly on the CPU instead
        {"demo-b": {"path": str(model_dir / "demo-b.gguf"), "context": 16384, "offload": "strict"}},
        {**settings(contexts=[1024, 16384], batch_sizes=[64], ubatch_sizes=[64]), "gpus": sim},
        start="guardian-supervisor",
    )
    r = g.ctl("bench", "run", "--wait", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["counts"] == {"ok": 1, "does_not_fit": 1}
    big = next(x for x in history(g) if x["ctx"] == 16384)
    assert (
        big["status"] == "does_not_fit"
        and "does not fit" in big["error"]
        and big["detail"]["needed_mib"] > 30
    )
    small = next(x for x in history(g) if x["ctx"] == 1024)
    assert small["memory"]["per_gpu_mib"] == {"0": small["memory"]["estimate_mib"]}
    assert len(history(g)) == 2, "recorded once, not retried"
