"""The benchmark suite alone: pure rules, the files, and the runner with a fake supervisor."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from guardian_supervisor.learning.bench_plan import (
    Cell,
    apply_records,
    detect_records,
    grid,
    next_cell,
    prompt_length,
    record_message,
    summarize,
)
from guardian_supervisor.learning.bench_store import BenchStore
from guardian_supervisor.learning.bench_types import Loaded, ModelFacts, UserActivity
from guardian_supervisor.learning.benchmark import Benchmark
from shared.config import BenchmarkSettings
from shared.errors import Code, GuardianError

pytestmark = pytest.mark.timeout(20)


# ---- pure ------------------------------------------------------------------------------


def test_grid_caps_contexts_and_drops_ubatch_above_batch():
    cells = grid({"a": 1024, "b": 300}, [256, 512, 4096], [64, 128], [64, 128])
    a = [c for c in cells if c.model == "a"]
    assert {c.ctx for c in a} == {256, 512, 1024}, "4096 is capped to the configured 1024"
    assert all(c.ubatch_size <= c.batch_size for c in cells)
    assert len(a) == 3 * 3  # (64,64) (128,64) (128,128) per context
    assert {c.ctx for c in cells if c.model == "b"} == {256, 300}
    assert [c.model for c in cells] == sorted(c.model for c in cells), "model by model"


def test_grid_without_contexts_uses_the_configured_one():
    assert grid({"a": 2048}, [], [512], [512]) == [Cell("a", 2048, 512, 512)]


def test_next_cell_skips_done():
    cells = [Cell("a", 256, 64, 64), Cell("a", 512, 64, 64)]
    assert next_cell(cells, {}) == cells[0]
    assert next_cell(cells, {cells[0].key: {}}) == cells[1]
    assert next_cell(cells, {c.key: {} for c in cells}) is None


def test_cell_round_trip():
    c = Cell("m:tag", 512, 128, 64)
    assert Cell.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.profile == {"batch_size": 128, "ubatch_size": 64}


def test_prompt_leaves_room_for_generation():
    assert prompt_length(512, 128, 4096) == 512
    assert prompt_length(512, 128, 256) == 256 - 128 - 8
    assert prompt_length(512, 300, 256) == 0


def test_summarize_takes_medians():
    s = summarize(
        [
            {"prompt_per_second": 10.0, "predicted_per_second": 100.0, "prompt_n": 32, "predicted_n": 8},
            {"prompt_per_second": 30.0, "predicted_per_second": 1.0, "prompt_n": 32, "predicted_n": 8},
            {"prompt_per_second": 20.0, "predicted_per_second": 90.0, "prompt_n": 32, "predicted_n": 8},
        ]
    )
    assert s["prompt_tps"] == 20.0 and s["gen_tps"] == 90.0
    assert s["prompt_n"] == 32 and s["gen_tps_runs"] == [100.0, 1.0, 90.0]


def result(
    model: str = "a", gen: float = 10.0, prompt: float = 100.0, ctx: int = 512, status: str = "ok"
) -> dict:
    return {
        "model": model,
        "ctx": ctx,
        "batch_size": 64,
        "ubatch_size": 64,
        "gen_tps": gen,
        "prompt_tps": prompt,
        "status": status,
        "run_id": "r",
        "at": 1.0,
    }


def test_records_first_figure_then_only_improvements():
    records: dict[str, Any] = {}
    first = detect_records(None, result(gen=10, prompt=100))
    assert [(e["metric"], e["old"], e["new"]) for e in first] == [
        ("gen_tps", None, 10),
        ("prompt_tps", None, 100),
    ]
    apply_records(records, first)
    better = detect_records(records["best"]["a"], result(gen=12, prompt=90, ctx=1024))
    assert [(e["metric"], e["old"], e["new"]) for e in better] == [("gen_tps", 10, 12)]
    assert better[0]["settings"] == {"ctx": 1024, "batch_size": 64, "ubatch_size": 64}
    assert better[0]["old_settings"] == {"ctx": 512, "batch_size": 64, "ubatch_size": 64}
    apply_records(records, better)
    assert records["best"]["a"]["gen_tps"]["value"] == 12
    assert detect_records(records["best"]["a"], result(gen=12, prompt=90, ctx=1024)) == [], "idempotent"
    assert detect_records(None, result(status="does_not_fit")) == []
    msg = record_message(better[0])
    assert msg.startswith("🏆") and "10.0 → 12.0" in msg and "ctx 1024" in msg


# ---- files -----------------------------------------------------------------------------


def test_history_survives_a_torn_line(tmp_path):
    store = BenchStore(tmp_path)
    store.append_history({"run_id": "r", "n": 1})
    with open(store.history_path, "ab") as f:
        f.write(b'{"run_id": "r", "n"')  # killed mid-write
    store.append_history({"run_id": "r", "n": 2})
    store.append_history({"run_id": "other", "n": 3})
    assert [x["n"] for x in store.read_history("r")] == [1, 2]
    assert len(store.read_history()) == 3


# ---- the runner, with a fake supervisor -------------------------------------------------


class FakeHost:
    def __init__(self, models: dict[str, int], no_fit: set[str] = frozenset()) -> None:
        self.facts = {n: ModelFacts(n, c, f"/m/{n}.gguf", 100, "official") for n, c in models.items()}
        self.no_fit = no_fit
        self.leases: set[str] = set()
        self.acquired: list[str] = []
        self.busy = False
        self.n = 0

    async def refresh_models(self) -> dict[str, ModelFacts]:
        return dict(self.facts)

    async def models(self) -> dict[str, ModelFacts]:
        return dict(self.facts)

    def resolve(self, name: str) -> str:
        if name not in self.facts:
            raise GuardianError(Code.MODEL_NOT_FOUND, f"model '{name}' not found")
        return name

    async def acquire(self, cell: Cell) -> Loaded:
        self.acquired.append(cell.key)
        if cell.model in self.no_fit:
            raise GuardianError(Code.DOES_NOT_FIT, "does not fit: needs 9 MiB", {"needed_mib": 9})
        self.n += 1
        lease = f"l{self.n}"
        self.leases.add(lease)
        return Loaded(lease, "http://x", cell.ctx, 0.1, 30)

    def release(self, lease: str) -> None:
        self.leases.discard(lease)

    async def memory(self, model: str) -> dict[str, Any]:
        return {"mode": "cpu", "estimate_mib": 5}

    async def unload_leftovers(self) -> None:
        pass

    def user_busy(self) -> bool:
        return self.busy


class FakeMeasurer:
    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None  # when set, completions wait for it
        self.hold_when: Any = None  # with `gate`: wait only once this says so (a callable)
        self.started = asyncio.Event()
        self.speed = 100.0

    async def prompt(self, url: str, n_tokens: int, timeout_s: float) -> list[int]:
        return [1] * n_tokens

    async def complete(
        self, url: str, prompt: list[int], gen_tokens: int, timeout_s: float
    ) -> dict[str, Any]:
        self.started.set()
        if self.gate is not None and (self.hold_when is None or self.hold_when()):
            await self.gate.wait()
        self.speed += 1
        return {"prompt_per_second": self.speed * 10, "predicted_per_second": self.speed, "id_slot": 0}

    async def forget(self, url: str, slots: set[int], timeout_s: float) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


SETTINGS = BenchmarkSettings(
    contexts=(256, 512),
    batch_sizes=(64, 128),
    ubatch_sizes=(64,),
    prompt_tokens=16,
    gen_tokens=4,
    repetitions=2,
    idle_minutes=1,
)


def make(tmp_path, host=None, measurer=None, clock=None):
    host = host or FakeHost({"a": 1024, "b": 1024})
    measurer = measurer or FakeMeasurer()
    clock = clock or Clock()
    b = Benchmark(host, BenchStore(tmp_path), lambda: SETTINGS, measurer, UserActivity(clock))
    return b, host, measurer, clock


async def wait_for(pred, within=5.0):
    deadline = asyncio.get_running_loop().time() + within
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_full_run_writes_history_state_and_records(tmp_path):
    b, host, _m, _c = make(tmp_path)
    ended = []
    b.on_end.append(ended.append)
    await b.load()
    st = await b.start(None, "manual")
    assert st["total"] == 8 and st["status"] == "running"
    await wait_for(lambda: not b.active)
    assert ended and ended[0]["status"] == "finished"
    store = BenchStore(tmp_path)
    lines = store.read_history()
    assert len(lines) == 8 and all(x["status"] == "ok" for x in lines)
    assert len({Cell.from_dict(x).key for x in lines}) == 8
    assert all(x["memory"]["estimate_mib"] == 5 and x["load_s"] == 0.1 for x in lines)
    state = store.load_state()
    assert state["status"] == "finished" and len(state["done"]) == 8
    records = store.load_records()
    assert records["best"]["b"]["gen_tps"]["value"] == max(x["gen_tps"] for x in lines if x["model"] == "b")
    assert not host.leases, "every lease was released"


async def test_a_cell_that_does_not_fit_is_recorded_once(tmp_path):
    b, host, _m, _c = make(tmp_path, FakeHost({"a": 1024, "big": 1024}, no_fit={"big"}))
    await b.load()
    await b.start(None, "manual")
    await wait_for(lambda: not b.active)
    lines = BenchStore(tmp_path).read_history()
    big = [x for x in lines if x["model"] == "big"]
    assert len(big) == 4 and all(x["status"] == "does_not_fit" and "9 MiB" in x["error"] for x in big)
    assert sum(k.startswith("big") for k in host.acquired) == 4, "never retried"
    assert b.status()["counts"] == {"ok": 4, "does_not_fit": 4}


async def test_resume_after_a_crash_between_history_and_state(tmp_path):
    b, _host, _m, _c = make(tmp_path)
    await b.load()
    await b.start(["a"], "manual")
    await wait_for(lambda: not b.active)
    store = BenchStore(tmp_path)
    # Rewind the state as if the supervisor died after writing the 2nd history line but
    # before the state said so; a 3rd cell was being measured.
    state = store.load_state()
    keys = [Cell.from_dict(c).key for c in state["cells"]]
    lines = store.read_history()
    store.save_state(
        {
            **state,
            "status": "running",
            "done": {keys[0]: state["done"][keys[0]]},
            "current": state["cells"][2],
        }
    )
    store.history_path.write_text("".join(json.dumps(x) + "\n" for x in lines[:2]))

    b2, host2, _m2, clock2 = make(tmp_path)
    await b2.load()
    assert set(b2.state["done"]) == {keys[0], keys[1]}, "the history is the truth"
    assert b2.interrupted_source() == "manual" and b2.status()["status"] == "interrupted"
    b2.resume()
    await asyncio.sleep(0.05)
    assert b2.status()["status"] == "paused", "waits for quiet after a restart"
    clock2.t += 61
    await wait_for(lambda: not b2.active)
    assert host2.acquired == keys[2:], "only the unfinished cells ran"
    after = store.read_history()
    assert sorted(Cell.from_dict(x).key for x in after) == sorted(keys)
    assert store.load_state()["status"] == "finished"


async def test_user_request_preempts_and_the_run_resumes_when_quiet(tmp_path):
    measurer = FakeMeasurer()
    measurer.gate = asyncio.Event()
    b, host, _m, clock = make(tmp_path, measurer=measurer)
    await b.load()
    await b.start(["a"], "manual")
    await asyncio.wait_for(measurer.started.wait(), 5)
    first = b.state["current"]
    assert host.leases, "measuring holds a lease"
    b.note_acquire("b", user=True)  # a user wants another model
    await wait_for(lambda: not host.leases)
    await wait_for(lambda: b.status()["status"] == "paused")
    assert b.status()["done"] == 0, "the interrupted cell is not finished"
    measurer.gate.set()
    await asyncio.sleep(0.1)
    assert b.status()["status"] == "paused", "not before idle_minutes of quiet"
    clock.t += 61
    await wait_for(lambda: not b.active)
    keys = [Cell.from_dict(x).key for x in BenchStore(tmp_path).read_history()]
    assert len(keys) == 4 == len(set(keys)), "every cell once"
    assert host.acquired.count(Cell.from_dict(first).key) == 2, "the interrupted cell ran again"


async def test_benchmark_own_acquires_do_not_pause_it(tmp_path):
    b, _host, _m, _c = make(tmp_path)
    await b.load()
    await b.start(["a"], "manual")
    b.note_acquire("a", user=False)
    await wait_for(lambda: not b.active)
    assert b.status()["status"] == "finished"


async def test_stop_keeps_finished_cells_and_run_continues(tmp_path):
    measurer = FakeMeasurer()
    b, _host, _m, _c = make(tmp_path, measurer=measurer)
    ended = []
    b.on_end.append(ended.append)
    await b.load()
    # Hold the run once a cell is done: on an idle machine all four finish between two polls.
    measurer.gate, measurer.hold_when = asyncio.Event(), lambda: b.status()["done"] >= 1
    await b.start(["a"], "manual")
    await wait_for(lambda: b.status()["done"] >= 1)
    st = await b.stop()
    assert st["status"] == "stopped" and ended[-1]["status"] == "stopped"
    done = st["done"]
    assert 1 <= done < 4
    measurer.gate.set()
    st = await b.start(["a"], "manual")
    assert st["run_id"] == ended[-1]["run_id"] and st["done"] == done, "continued, not restarted"
    await wait_for(lambda: not b.active)
    assert b.status()["done"] == 4
    st = await b.start(["a"], "manual", new=True)
    assert st["run_id"] != ended[-1]["run_id"] and st["done"] == 0


async def test_a_second_run_over_other_models_is_refused(tmp_path):
    measurer = FakeMeasurer()
    measurer.gate = asyncio.Event()
    b, _host, _m, _c = make(tmp_path, measurer=measurer)
    await b.load()
    await b.start(["a"], "manual")
    with pytest.raises(GuardianError) as e:
        await b.start(["b"], "manual")
    assert e.value.code is Code.CONFLICT
    assert (await b.start(["a"], "manual"))["status"] in ("running", "paused")
    with pytest.raises(GuardianError):
        await b.start(["nope"], "manual")
    await b.close()
    assert BenchStore(tmp_path).load_state()["status"] == "running", "shutdown keeps the status"


async def test_a_user_waiting_for_a_swap_counts_as_busy(tmp_path):
    # Until the swap to their model is done a user holds no lease, yet the run must stay paused.
    from types import SimpleNamespace

    from guardian_supervisor.learning.wiring import BENCH_CONN, SupervisorBenchHost
    from guardian_supervisor.models.scheduler import Scheduler, Waiter, Want
    from shared.config import Config, ModelConfig, Settings, SupervisorSettings

    settings = Settings(supervisor=SupervisorSettings(data_dir=tmp_path))
    config = Config(tmp_path, settings, {"m": ModelConfig(name="m", path=tmp_path / "m.gguf")})
    sched = Scheduler(config, planner=None)  # type: ignore[arg-type]
    host = SupervisorBenchHost(SimpleNamespace(scheduler=sched))  # type: ignore[arg-type]
    future = asyncio.get_running_loop().create_future()
    assert not host.user_busy()
    sched.queue.append(Waiter("m", future, Want(user=False), 0.0, BENCH_CONN))
    assert not host.user_busy(), "the benchmark's own wait is not a user's"
    sched.queue.append(Waiter("m", future, Want(user=True), 0.0, 7))
    assert host.user_busy()
