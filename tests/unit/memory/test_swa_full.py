"""--swa-full for upstream sliding-window models when carry-over needs it (and it is cheap)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from guardian_supervisor.demo_models import TinySpec, write_tiny_llama
from guardian_supervisor.memory.fitparams import LaunchKnobs, fit_argv
from guardian_supervisor.memory.gguf_info import ModelInfo, read_model_info
from guardian_supervisor.memory.planner import choose_swa_full, knobs_for, measured_key
from guardian_supervisor.models.argv import Placement, build_argv
from shared.config import Backend, ModelConfig

GEMMA = Path(__file__).resolve().parents[3] / "data" / "models" / "gemma-3-270m-q4_k_m.gguf"
MiB = 1 << 20
CAP = 1024 * MiB


@pytest.fixture(scope="module")
def gemma() -> ModelInfo:
    if not GEMMA.exists():
        pytest.skip(f"{GEMMA} missing: run 'make models'")
    return read_model_info(GEMMA)


def cfg(path: Path = GEMMA, **kw: object) -> ModelConfig:
    return ModelConfig(name="g", path=path, context=8192, **kw)  # type: ignore[arg-type]


def test_carry_over_turns_it_on_for_upstream_gemma(gemma: ModelInfo) -> None:
    c = choose_swa_full(gemma, cfg(), 8192, "upstream", True, CAP)
    # 18 layers x 8192 cells x 1 KiB, against 3 full layers + 15 of 1024 cells: 144 - 39 MiB.
    assert c.on and c.extra_bytes == 105 * MiB and "carry-over" in c.reason


def test_ik_and_models_without_a_window_never_get_it(gemma: ModelInfo, tmp_path: Path) -> None:
    assert not choose_swa_full(gemma, cfg(), 8192, "ik", True, CAP).on
    tiny = read_model_info(write_tiny_llama(tmp_path / "t.gguf", TinySpec()))
    c = choose_swa_full(tiny, cfg(tmp_path / "t.gguf"), 8192, "upstream", True, CAP)
    assert not c.on and c.reason == "no sliding-window layers" and c.extra_bytes == 0


def test_off_without_carry_over_or_above_the_cap_saying_why(gemma: ModelInfo) -> None:
    assert not choose_swa_full(gemma, cfg(), 8192, "upstream", False, CAP).on
    c = choose_swa_full(gemma, cfg(), 8192, "upstream", True, 64 * MiB)
    assert not c.on and "105 MiB" in c.reason and "swa_full_max_mb" in c.reason and "swa_full: on" in c.reason


def test_the_models_yaml_key_overrides_both_ways(gemma: ModelInfo) -> None:
    assert choose_swa_full(gemma, cfg(swa_full="on"), 8192, "upstream", False, 0).on
    assert not choose_swa_full(gemma, cfg(swa_full="off"), 8192, "upstream", True, CAP).on


def test_argv_fit_params_and_the_measured_key_follow_the_choice(tmp_path: Path) -> None:
    m = cfg(write_tiny_llama(tmp_path / "t.gguf", TinySpec()))
    up = build_argv(
        m, Backend("llama-server", "upstream"), binary="s", port=1, placement=Placement(swa_full=True)
    )
    ik = build_argv(m, Backend("ik", "ik"), binary="s", port=1, placement=Placement(swa_full=True))
    assert "--swa-full" in up and "--swa-full" not in ik  # ik has no such flag (its cache is full)
    assert "--swa-full" not in build_argv(m, Backend("llama-server", "upstream"), binary="s", port=1)
    on, off = knobs_for(m, 8192, True), knobs_for(m, 8192)
    assert on.key() != off.key() and off.key() == replace(off, swa_full=False).key()
    assert "--swa-full" in fit_argv("fp", m.path, on) and "--swa-full" not in fit_argv("fp", m.path, off)
    assert measured_key(m, 8192, True) == measured_key(m, 8192) + "|swa_full"
    assert isinstance(on, LaunchKnobs)


def test_unified_kv_from_extra_args_reaches_the_estimate_and_fit_params(gemma: ModelInfo) -> None:
    from guardian_supervisor.memory.planner import estimate_for, kv_unified_in

    assert kv_unified_in(["-kvu"]) and kv_unified_in(["--kv-unified"]) and not kv_unified_in(["-np", "2"])
    m = cfg(parallel=2)
    split = estimate_for(gemma, m, 8192, "upstream", False, 0)
    unified = estimate_for(gemma, m, 8192, "upstream", False, 0, kv_unified=True)
    # Measured on Gemma 3 270M -np 2 (tests/unit/memory/test_estimate.py SWA_CELLS):
    # 2 x 1024 SWA cells split, 1536 unified.
    assert split.kv_bytes - unified.kv_bytes == 15 * 512 * 1024
    assert "-kvu" in fit_argv("fp", GEMMA, knobs_for(m, 8192, kv_unified=True))


def test_a_projector_adds_its_weights_and_survives_measured_figures(tmp_path: Path) -> None:
    from guardian_supervisor.memory.planner import estimate_for, prefer_measured, with_projector

    info = read_model_info(write_tiny_llama(tmp_path / "t.gguf", TinySpec()))
    proj = read_model_info(write_tiny_llama(tmp_path / "p.gguf", TinySpec(name="proj", n_layer=1)))
    base = estimate_for(info, cfg(tmp_path / "t.gguf"), 2048, "upstream", True, 0)
    est = with_projector(base, proj.weights_bytes)
    assert est.total_bytes - base.total_bytes == proj.weights_bytes == est.projector_bytes
    assert est.nonrepeating_bytes == base.nonrepeating_bytes + proj.weights_bytes
    # llama-server's model buffers do not hold the projector: the layers keep their share.
    meas = {"model_bytes": base.weights_bytes, "kv_bytes": base.kv_bytes, "compute_bytes": base.compute_bytes}
    used = prefer_measured(est, meas)
    assert used.layer_weight_bytes == base.layer_weight_bytes
    assert used.total_bytes == est.total_bytes
