"""A vision projector's (--mmproj) estimate: the pure function of its GGUF, the log lines that
measure it, and how the planner counts it (GPU, or RAM with --no-mmproj-offload)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from guardian_supervisor.demo_models import TinySpec, write_tiny_llama
from guardian_supervisor.memory.estimate import parse_buffer_lines
from guardian_supervisor.memory.gguf_info import ModelInfo, read_model_info
from guardian_supervisor.memory.gpus import SimulatedSource
from guardian_supervisor.memory.planner import VramPlanner, estimate_for, prefer_measured, with_projector
from guardian_supervisor.memory.projector import (
    POS_EXTRA_BYTES,
    estimate_projector,
    ik_mtmd_ubatch,
    parse_projector_lines,
    projector_compute_bytes,
    projector_compute_stages,
    projector_in_ram,
    projector_shape,
)
from guardian_supervisor.models.plans import Go
from shared.config import ModelConfig, load_config
from tests.families.projector_families import PROJECTORS, ProjectorSpec, write_pair, write_projector

MiB = 1 << 20
BACKEND_IK = {"binary": "llama-server-ik", "flavor": "ik"}
SPEC = PROJECTORS["mlp-224"]


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    return read_model_info(write_projector(tmp_path_factory.mktemp("p") / "p.gguf", SPEC))


def test_the_shape_comes_from_the_clip_keys_and_tensors(proj: ModelInfo) -> None:
    s = projector_shape(proj)
    assert s is not None and s.projector_type == "mlp"
    assert (s.image_size, s.patch_size, s.n_embd, s.n_ff, s.n_head) == (224, 14, 192, 768, 6)
    assert s.n_patches == SPEC.n_patches == 256 and s.n_pos == 257  # + the class token
    assert s.proj_hidden == SPEC.proj_hidden and s.n_embd_out == SPEC.n_embd_text
    assert s.kernel_bytes == 2  # an f16 patch kernel: im2col's copy of the image is f16


def test_gemma3_pools_its_patches_and_uses_the_vit_graph(tmp_path: Path) -> None:
    spec = PROJECTORS["gemma3-224"]
    s = projector_shape(read_model_info(write_projector(tmp_path / "g.gguf", spec)))
    assert s is not None and s.projector_type == "gemma3"
    assert s.n_pos == s.n_patches == 256  # no class token
    assert s.n_merge == 4 and s.n_tokens_out == spec.n_tokens_out == 16
    n, e = s.n_pos, s.n_embd
    stages = projector_compute_stages(s, True)
    # build_vit keeps three rows beside the FFN activations (llava's graph four)
    assert stages["ffn"] == 4 * n * (s.n_ff + 3 * e)
    assert projector_compute_stages(s, False)["attention"] == 4 * n * (s.n_head * n + 6 * e)
    # printed by upstream build 11434 (CPU) for this file: 1.31 MiB with -fa on, 2.62 without
    assert abs(projector_compute_bytes(s, True) - 1.31 * MiB) <= 0.03 * MiB
    assert abs(projector_compute_bytes(s, False) - 2.62 * MiB) <= 0.03 * MiB


def test_compute_is_the_largest_stage(proj: ModelInfo) -> None:
    s = projector_shape(proj)
    assert s is not None
    n, e = s.n_pos, s.n_embd
    fa, plain = projector_compute_stages(s, True), projector_compute_stages(s, False)
    # without flash attention every head's n x n scores are live at once
    assert plain["attention"] == 4 * n * (s.n_head * n + 5 * e)
    assert projector_compute_bytes(s, False) == plain["attention"] + POS_EXTRA_BYTES * n
    # with it the FFN is the widest point: the n_ff activations beside four rows of n_embd
    assert max(fa, key=lambda k: fa[k]) == "ffn" and fa["ffn"] == 4 * n * (s.n_ff + 4 * e)
    # printed by upstream build 11434 (CPU) for this file: 1.52 MiB with -fa on, 2.46 without
    assert abs(projector_compute_bytes(s, True) - 1.52 * MiB) <= 0.01 * MiB
    assert abs(projector_compute_bytes(s, False) - 2.46 * MiB) <= 0.015 * MiB


def test_scores_grow_with_heads_and_patches_squared(tmp_path: Path) -> None:
    def compute(fa: bool, **kw: int) -> int:
        s = projector_shape(read_model_info(write_projector(tmp_path / "x.gguf", ProjectorSpec(**kw))))  # type: ignore[arg-type]
        assert s is not None
        return projector_compute_bytes(s, fa)

    base = compute(False)
    n = SPEC.n_patches + 1
    assert compute(False, n_head=12) - base == 4 * 6 * n * n  # six more heads of scores
    assert compute(True, n_head=12) == compute(True)  # flash attention keeps no scores
    big = compute(False, image_size=448)  # 4x the patches: ~16x the scores
    assert big > 10 * base


def test_ik_never_uses_flash_attention_in_clip(proj: ModelInfo) -> None:
    ik = estimate_projector(proj, flavor="ik", flash_attn=True)
    up_off = estimate_projector(proj, flavor="upstream", flash_attn=False)
    up_on = estimate_projector(proj, flavor="upstream", flash_attn=True)
    assert ik == up_off and not ik.flash_attn
    assert up_on.compute_bytes < up_off.compute_bytes
    assert up_on.weights_bytes == proj.weights_bytes  # clip loads every tensor in the file


def test_a_file_without_a_vision_encoder_adds_weights_only(tmp_path: Path) -> None:
    info = read_model_info(write_tiny_llama(tmp_path / "t.gguf", TinySpec()))
    assert projector_shape(info) is None
    est = estimate_projector(info)
    assert est.weights_bytes == info.weights_bytes and est.compute_bytes == 0


@pytest.mark.parametrize(
    ("args", "in_ram"),
    [
        (["--no-mmproj-offload"], True),
        (["-mmdev", "none"], True),
        (["--mmproj-device=none"], True),
        (["-mmdev", "CUDA1"], False),
        (["--mmproj-offload"], False),
        (["--no-mmproj-offload", "--mmproj-offload"], False),  # the last one wins
        (["--mmproj-offload", "-mmdev", "none"], True),
        (["-ngl", "99"], False),
        ([], False),
    ],
)
def test_projector_in_ram_from_extra_args(args: list[str], in_ram: bool) -> None:
    assert projector_in_ram(args) is in_ram


UPSTREAM_LOG = [
    "load_tensors:   CPU_Mapped model buffer size =     1.52 MiB",
    "sched_reserve:        CPU compute buffer size =     4.27 MiB",
    "load_hparams: model size:         3.12 MiB",
    "reserve_compute_meta:      CUDA0 compute buffer size =     9.00 MiB",  # flash attention refused:
    "reserve_compute_meta:      CUDA0 compute buffer size =    12.00 MiB",  # reserved again without
    "reserve_compute_meta:        CPU compute buffer size =     0.50 MiB",
]


def test_the_projector_lines_are_parsed_and_kept_out_of_the_text_models() -> None:
    got = parse_projector_lines(UPSTREAM_LOG)
    assert got is not None
    assert got.weights_bytes == round(3.12 * MiB) and got.compute_bytes == round(12.5 * MiB)
    assert parse_buffer_lines(UPSTREAM_LOG).compute_bytes == round(4.27 * MiB)  # clip's not counted
    ik = [
        "load_hparams: model size:         3.12 MiB",
        "alloc_compute_meta:        CPU compute buffer size =     2.46 MiB",
    ]
    got = parse_projector_lines(ik)
    assert got is not None and got.compute_bytes == round(2.46 * MiB)
    assert parse_projector_lines(UPSTREAM_LOG[:2]) is None


def test_ik_runs_the_whole_batch_as_one_ubatch_with_a_projector() -> None:
    assert ik_mtmd_ubatch(8192) == 2048  # -b 2048 (default): -ub follows it
    assert ik_mtmd_ubatch(1024) == 1024  # -b is capped at -c first
    assert ik_mtmd_ubatch(8192, n_batch=512, n_ubatch=1024) == 1024  # never below the -ub given


def test_with_projector_on_gpu_and_in_ram(tmp_path: Path, proj: ModelInfo) -> None:
    info = read_model_info(write_tiny_llama(tmp_path / "t.gguf", TinySpec()))
    m = ModelConfig(name="t", path=tmp_path / "t.gguf", context=2048)
    base = estimate_for(info, m, 2048, "upstream", True, 0)
    pe = estimate_projector(proj)
    gpu = with_projector(base, pe.weights_bytes, pe.compute_bytes)
    assert gpu.total_bytes - base.total_bytes == pe.weights_bytes + pe.compute_bytes
    assert gpu.nonrepeating_bytes - base.nonrepeating_bytes == pe.weights_bytes + pe.compute_bytes
    assert gpu.to_dict()["projector_compute_mib"] == round(pe.compute_bytes / MiB, 2)
    ram = with_projector(base, pe.weights_bytes, pe.compute_bytes, in_ram=True)
    assert ram.total_bytes == base.total_bytes and ram.projector_in_ram
    assert ram.projector_bytes == pe.weights_bytes and ram.projector_compute_bytes == pe.compute_bytes
    # measured text-model buffers leave the projector's share where it was
    meas = {"model_bytes": base.weights_bytes, "kv_bytes": base.kv_bytes, "compute_bytes": base.compute_bytes}
    for est in (gpu, ram):
        used = prefer_measured(est, meas)
        assert used.layer_weight_bytes == base.layer_weight_bytes and used.total_bytes == est.total_bytes


def _planner(tmp_path: Path, models: dict[str, dict[str, object]]) -> VramPlanner:
    cfg_dir = tmp_path / "etc"
    cfg_dir.mkdir()
    (cfg_dir / "models.yaml").write_text(yaml.safe_dump({"models": models}))
    (cfg_dir / "settings.yaml").write_text(
        yaml.safe_dump(
            {
                "supervisor": {"data_dir": str(tmp_path / "data")},
                "gpus": {"overhead_mb": 0},
                "backends": {"up": {"binary": "llama-server", "flavor": "upstream"}, "ik": BACKEND_IK},
                "default_backend": "up",
            }
        )
    )
    config = load_config(cfg_dir)
    source = SimulatedSource(
        [{"name": "sim0", "total_mb": 1024}], cpu_total_bytes=8 << 30, cpu_available_bytes=4 << 30
    )
    p = VramPlanner(lambda: config, source, lambda: [])
    p.fit_binary = None  # no llama-fit-params: the estimator decides
    return p


async def test_the_planner_counts_the_projector_in_vram_or_ram(tmp_path: Path) -> None:
    text, proj = write_pair(tmp_path, "mlp-224")
    common = {"path": str(text), "context": 2048, "mmproj": str(proj)}
    p = _planner(
        tmp_path,
        {
            "plain": {"path": str(text), "context": 2048},
            "vis": common,
            "ram": {**common, "extra_args": "--no-mmproj-offload"},
        },
    )
    pe = estimate_projector(read_model_info(proj))
    src = {n: await p.sources(p.config.models[n], 2048) for n in ("plain", "vis", "ram")}
    assert src["vis"].used.total_bytes - src["plain"].used.total_bytes == pe.weights_bytes + pe.compute_bytes
    assert src["ram"].used.projector_in_ram and src["ram"].used.total_bytes == src["plain"].used.total_bytes
    plans, ram = {}, {}
    for n in ("plain", "vis", "ram"):
        rt = SimpleNamespace(name=n, config=p.config.models[n])
        plans[n] = await p.plan(rt, 2048, [])  # type: ignore[arg-type]
        assert isinstance(plans[n], Go)
        ram[n] = p.placed[n].cpu_bytes
        p.placed.clear()
    vram = {n: sum(plans[n].info["per_gpu_mib"].values()) for n in plans}  # type: ignore[union-attr]
    # --no-mmproj-offload: the GPU holds what the plain model does, RAM the projector
    assert vram["ram"] == vram["plain"] < vram["vis"]
    # in RAM: the projector's bytes alone (its warm-up buffer inside), no CPU compute buffer
    assert ram == {"plain": 0, "vis": 0, "ram": pe.weights_bytes + pe.compute_bytes}
    assert plans["ram"].info["ram_by_extra_args_mib"] == round((pe.weights_bytes + pe.compute_bytes) / MiB)  # type: ignore[union-attr]


async def test_ik_plans_the_text_model_with_its_larger_ubatch(tmp_path: Path) -> None:
    text, proj = write_pair(tmp_path, "mlp-224")
    models = {
        "vis": {"path": str(text), "context": 8192, "mmproj": str(proj), "backend": "ik"},
        "plain": {"path": str(text), "context": 8192, "backend": "ik"},
    }
    p = _planner(tmp_path, models)
    vis = (await p.sources(p.config.models["vis"], 8192)).estimate
    plain = (await p.sources(p.config.models["plain"], 8192)).estimate
    # ik's -ub 2048 (= -b) instead of 512 for the text model's compute buffer
    assert vis.compute_bytes > 2 * plain.compute_bytes
    # and ik's clip runs without flash attention whatever -fa says
    assert vis.projector_compute_bytes == estimate_projector(read_model_info(proj), flavor="ik").compute_bytes
