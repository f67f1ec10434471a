"""Offload instead of refusal: partial layers (-ngl), MoE experts in RAM (--n-cpu-moe),
refusal only when nothing fits, and the strict key. Fake inventories as in test_placement."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian_supervisor.memory.placement import (
    RAM_BYTES_PER_S,
    NoFit,
    PlaceRequest,
    Plan,
    offloaded_gen_tps,
    place,
)
from guardian_supervisor.memory.planner import offload_note
from guardian_supervisor.models.argv import Placement, build_argv
from shared.config import Backend, ModelConfig
from tests.unit.memory.test_placement import (
    COMPUTE,
    LIMITS,
    NONREP,
    OVERHEAD,
    RESERVE,
    G,
    as_plan,
    brief,
    gpu,
    model,
    rig,
)


def moe(name: str, gb: float, expert_share: float, n_layer: int = 48, **kw: object) -> PlaceRequest:
    """A MoE model: `expert_share` of each layer's bytes are its experts (ffn_*_exps)."""
    per = int(gb * G) // n_layer
    experts = (int(per * expert_share),) * n_layer
    return PlaceRequest(name, (per,) * n_layer, NONREP, COMPUTE, OVERHEAD, expert_bytes=experts, **kw)  # type: ignore[arg-type]


def test_a_model_that_fits_is_not_offloaded() -> None:
    plan = as_plan(place(moe("small-moe", 10, 0.9, allow_cpu_offload=True), brief(), [], LIMITS))
    assert plan.fits_fully and plan.n_cpu_moe == 0 and plan.n_gpu_layers == 49 and plan.cpu_bytes == 0


def test_dense_model_too_big_gets_the_most_layers_on_gpu() -> None:
    req = model("dense-70b", 40, n_layer=80, allow_cpu_offload=True)
    plan = as_plan(place(req, brief(), [], LIMITS))
    assert not plan.fits_fully and plan.n_cpu_moe == 0 and 0 < plan.n_gpu_layers < 80
    assert plan.cpu_bytes == (80 - plan.n_gpu_layers) * req.layer_bytes[0] + NONREP + COMPUTE


def test_moe_too_big_keeps_every_layer_on_gpu_and_the_fewest_experts_in_ram() -> None:
    # 40 GB, 90 % experts (a Qwen3-30B-A3B / gpt-oss shape), on 12 + 16 GB with Frigate.
    req = moe("qwen3moe", 40, 0.9, allow_cpu_offload=True)
    plan = as_plan(place(req, brief(), [], LIMITS))
    assert plan.n_gpu_layers == 49, "attention and shared weights of every layer stay on the GPUs"
    assert 0 < plan.n_cpu_moe < 48 and not plan.fits_fully
    assert plan.cpu_bytes == plan.n_cpu_moe * req.expert_bytes[0] + COMPUTE
    rooms = {0: 12 * G - RESERVE, 1: int(14.5 * G) - RESERVE}
    assert all(b <= rooms[i] for i, b in plan.per_gpu_bytes.items())

    # The fewest: with one layer's experts fewer in RAM the GPUs could not hold the rest,
    # while with exactly n_cpu_moe they can (checked as plain full-fit requests).
    def gpu_side(n: int) -> PlaceRequest:
        layers = tuple(b - (req.expert_bytes[i] if i < n else 0) for i, b in enumerate(req.layer_bytes))
        return PlaceRequest("gpu-side", layers, NONREP, COMPUTE, OVERHEAD)

    assert isinstance(place(gpu_side(plan.n_cpu_moe), brief(), [], LIMITS), Plan)
    assert isinstance(place(gpu_side(plan.n_cpu_moe - 1), brief(), [], LIMITS), NoFit)
    # Far more stays on the GPUs than with whole layers moved to the CPU.
    dense = as_plan(
        place(
            PlaceRequest(req.model, req.layer_bytes, NONREP, COMPUTE, OVERHEAD, allow_cpu_offload=True),
            brief(),
            [],
            LIMITS,
        )
    )
    assert dense.cpu_bytes > plan.cpu_bytes and dense.n_gpu_layers < 49


def test_moe_experts_that_do_not_fit_the_ram_fall_back_to_layers_or_refuse() -> None:
    inv = rig(gpu(0, 12), ram_free_gb=20)
    d = place(moe("big-moe", 60, 0.9, allow_cpu_offload=True), inv, [], LIMITS)
    # 60 GB on a 12 GB card: ~48 GB of experts would go to RAM, but only 20 GB is free.
    assert isinstance(d, NoFit)
    assert (
        "system RAM" in d.reason
        and "MiB" in d.reason
        and d.available_bytes == 20 * G
        and d.needed_bytes > d.available_bytes
    )


def test_fits_nowhere_is_refused_with_the_numbers() -> None:
    inv = rig(gpu(0, 12), ram_free_gb=8)
    d = place(model("llama-70b", 40, allow_cpu_offload=True), inv, [], LIMITS)
    assert isinstance(d, NoFit)
    assert f"{d.needed_bytes / (1 << 20):.0f} MiB" in d.reason and "8192 MiB" in d.reason


def test_strict_refuses_what_auto_would_offload() -> None:
    d = place(moe("qwen3moe", 40, 0.9, allow_cpu_offload=False), brief(), [], LIMITS)
    assert isinstance(d, NoFit) and "offload: strict" in d.reason and "MiB" in d.reason


def test_the_models_yaml_key_defaults_to_auto(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert ModelConfig("m", f).offload == "auto"
    assert ModelConfig("m", f, offload="strict").offload == "strict"


@pytest.mark.parametrize(
    ("flavor", "want"),
    [("upstream", ["--n-cpu-moe", "5"]), ("ik", ["-ot", r"blk\.(0|1|2|3|4)\.ffn_.*_exps\.=CPU"])],
)
def test_argv_carries_ngl_and_the_experts_on_cpu(tmp_path: Path, flavor: str, want: list[str]) -> None:
    cfg = ModelConfig("m", tmp_path / "m.gguf")
    argv = build_argv(
        cfg,
        Backend("llama-server", flavor),
        binary="llama-server",
        port=1,
        placement=Placement(n_gpu_layers=49, n_cpu_moe=5),
    )
    i = argv.index("-ngl")
    assert argv[i + 1] == "49" and argv[i + 2 : i + 4] == want
    plain = build_argv(
        cfg,
        Backend("llama-server", flavor),
        binary="llama-server",
        port=1,
        placement=Placement(n_gpu_layers=20),
    )
    assert "--n-cpu-moe" not in plain and "-ot" not in plain and plain[plain.index("-ngl") + 1] == "20"


def test_expected_speed_from_a_benchmark_record() -> None:
    # 10 GB of weights at 100 tok/s on the GPU (1 TB/s effective); 2 GB in RAM at 50 GB/s.
    tps = offloaded_gen_tps(100.0, 10 * 10**9, 2 * 10**9)
    assert tps == pytest.approx(1 / (8e9 / 1e12 + 2e9 / RAM_BYTES_PER_S))
    assert offloaded_gen_tps(100.0, 10**9, 0) == pytest.approx(100.0)
    # a benchmark slower than RAM reads (a tiny model) never predicts a speed-up
    assert offloaded_gen_tps(100.0, 10**6, 5 * 10**5) == 100.0
    plan = Plan("m", (), (0,), None, 0, 49, {0: 8 * G}, 2 * G, False, n_cpu_moe=5)
    note = offload_note(plan, 48, 10 * G, best_gen_tps=100.0)
    assert note["n_cpu_moe"] == 5 and "--n-cpu-moe" in note["how"] and note["expected_slowdown"] > 1
    assert offload_note(plan, 48, 10 * G)["expected_gen_tps"] is None
    # a faster RAM (measured, or gpus.ram_gbs) costs less: the note says which figure it used
    fast = offload_note(plan, 48, 10 * G, best_gen_tps=100.0, ram_bytes_per_s=200e9)
    assert fast["ram_gbs"] == 200.0 and fast["expected_gen_tps"] > note["expected_gen_tps"]


def test_ram_bandwidth_is_measured_not_assumed() -> None:
    from guardian_supervisor.memory.ram_bandwidth import read_bandwidth

    # 64 MiB read by 2 threads: any machine that runs the suite reads between 0.5 and 2000 GB/s
    bw = read_bandwidth(64 * 1024 * 1024, threads=2, repeats=2)
    assert 0.5e9 < bw < 2e12
    with pytest.raises(ValueError, match="at least 1 MiB"):
        read_bandwidth(1024)


def test_expert_bytes_are_read_per_layer_from_the_gguf(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    from guardian_supervisor.memory.gguf_info import read_model_info
    from guardian_supervisor.memory.planner import expert_bytes

    path = tmp_path / "moe.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    w.add_block_count(2)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_feed_forward_length(16)
    w.add_context_length(128)
    w.add_tensor("token_embd.weight", np.zeros((32, 8), dtype=np.float32))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
        for part in ("gate", "up", "down"):
            w.add_tensor(f"blk.{i}.ffn_{part}_exps.weight", np.zeros((4, 16, 8), dtype=np.float16))
        w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", np.zeros((4, 8), dtype=np.float32))  # the router stays
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_model_info(path)
    assert expert_bytes(info) == (3 * 4 * 16 * 8 * 2,) * 2
    assert all(e < b for e, b in zip(expert_bytes(info), info.layer_bytes, strict=True))
