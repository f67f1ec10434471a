"""The request optimizer's rules: what it learns from which results and samples, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guardian_supervisor.learning.optimizer import Optimizer, ServerView, learn, slot_lengths, usable_results
from shared.config import ModelConfig, OptimizerSettings

pytestmark = pytest.mark.timeout(20)

MODEL = ModelConfig(name="m", path=Path("/m.gguf"), context=8192)


def row(ctx: int, b: int, ub: int, gen: float, prompt: float, **over: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "status": "ok",
        "path": "/m.gguf",
        "size": 10,
        "at": 100.0,
        "run_id": "r1",
        "ctx": ctx,
        "batch_size": b,
        "ubatch_size": ub,
        "gen_tps": gen,
        "prompt_tps": prompt,
        **over,
    }


RESULTS = [
    row(1024, 512, 512, 50.0, 900.0),
    row(2048, 512, 512, 60.0, 950.0),
    row(2048, 2048, 512, 59.0, 1200.0),
    row(4096, 512, 512, 61.0, 800.0),  # within 3% of 2048's 60: the smaller one wins
    row(8192, 512, 512, 40.0, 700.0),
    row(16384, 512, 512, 99.0, 999.0),  # above the configured context: never used
]


def test_no_samples_no_learned_context_but_batch_settings():
    got = learn(MODEL, RESULTS, [], 5)
    assert got.ctx is None and "0 of the 5" in got.ctx_why
    # At the benchmarked context nearest the configured 8192: only (512, 512) there.
    assert got.profile == (("batch_size", 512), ("ubatch_size", 512))
    assert "context 8192" in got.profile_why


def test_learns_the_fastest_context_that_holds_the_conversations():
    got = learn(MODEL, RESULTS, [300, 1200, 800, 500, 900], 5)
    assert got.longest == 1200 and got.need == 1500
    assert got.ctx == 2048, got.ctx_why  # 1024 is too small; 4096 is only 1.7% faster
    assert "1200 tokens" in got.ctx_why and "2048" in got.ctx_why and "within 3%" in got.ctx_why
    assert got.ctx_source is not None and got.ctx_source["run_id"] == "r1"
    # At 2048, batch 2048 processes prompts fastest.
    assert got.profile == (("batch_size", 2048), ("ubatch_size", 512))
    assert got.profile_source is not None and got.profile_source["prompt_tps"] == 1200.0


def test_clearly_faster_larger_context_wins():
    rows = [row(2048, 512, 512, 50.0, 900.0), row(4096, 512, 512, 70.0, 900.0)]
    assert learn(MODEL, rows, [100] * 5, 5).ctx == 4096


def test_conversations_longer_than_any_benchmark_keep_the_configured_context():
    got = learn(MODEL, RESULTS, [7000] * 5, 5)
    assert got.ctx is None and "more than any benchmarked context" in got.ctx_why


def test_models_yaml_batch_settings_are_kept():
    fixed = ModelConfig(name="m", path=Path("/m.gguf"), context=8192, batch_size=512)
    got = learn(fixed, RESULTS, [1200] * 5, 5)
    assert got.profile == (("ubatch_size", 512),), "only the unset key is learned"
    both = ModelConfig(name="m", path=Path("/m.gguf"), context=8192, batch_size=512, ubatch_size=512)
    assert learn(both, RESULTS, [], 5).profile == ()


def test_usable_results_newest_for_this_file_after_reset():
    lines = [
        row(1024, 512, 512, 10.0, 10.0, at=1.0),
        row(1024, 512, 512, 20.0, 20.0, at=2.0),
        row(2048, 512, 512, 30.0, 30.0, size=11),  # another file under the same path
        row(4096, 512, 512, 30.0, 30.0, status="does_not_fit"),
        row(1024, 512, 512, 30.0, 30.0, model="other"),
    ]
    got = usable_results(lines, "m", "/m.gguf", 10, 0.0)
    assert [(r["ctx"], r["gen_tps"]) for r in got] == [(1024, 20.0)]
    assert usable_results(lines, "m", "/m.gguf", 10, 5.0) == [], "older than the reset"


def test_slot_lengths_both_formats():
    upstream = [
        {
            "id": 0,
            "id_task": 7,
            "is_processing": False,
            "n_prompt_tokens": 49,
            "next_token": [{"n_decoded": 0}],
        },
        {"id": 1, "id_task": 8, "is_processing": True, "n_prompt_tokens": 10},
        {"id": 2, "is_processing": False, "n_prompt_tokens": 0},
    ]
    assert slot_lengths(upstream) == [("0:7:49", 49)]
    older = [{"id": 0, "id_task": 3, "n_past": 812, "is_processing": False, "next_token": {"n_decoded": 12}}]
    assert slot_lengths(older)[0][1] == 812
    assert slot_lengths({"error": "x"}) == []


async def test_launch_defaults_and_samples(tmp_path):
    settings = OptimizerSettings(enabled=True, min_samples=2)
    history = [row(1024, 512, 512, 50.0, 900.0, path=str(tmp_path / "m.gguf"), size=3)]
    (tmp_path / "m.gguf").write_bytes(b"abc")
    model = ModelConfig(name="m", path=tmp_path / "m.gguf", context=4096)

    async def read_history() -> list[dict[str, Any]]:
        return history

    opt = Optimizer(
        tmp_path / "optimizer_state.json",
        lambda: settings,
        lambda: {"m": model},
        read_history,
        lambda name: ServerView("READY", 0, "http://x"),
    )
    await opt.refresh()
    assert opt.launch_defaults(model) == (None, (("batch_size", 512), ("ubatch_size", 512)))
    assert opt._add_samples("m", [("0:1:100", 100), ("0:2:300", 300)])
    assert not opt._add_samples("m", [("0:2:300", 300)]), "the same conversation is counted once"
    await opt.refresh()
    assert opt.launch_defaults(model)[0] == 1024
    settings = OptimizerSettings(enabled=False, min_samples=2)
    assert opt.launch_defaults(model) == (None, ())
    settings = OptimizerSettings(enabled=True, min_samples=2)
    await opt.reset("m")
    assert opt.launch_defaults(model) == (None, ()), "reset forgets samples and older results"
    assert (tmp_path / "optimizer_state.json").exists()
    await opt.close()
