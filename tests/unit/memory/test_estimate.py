"""estimate: KV/compute/weights arithmetic and parsing llama-server's buffer log lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian_supervisor.demo_models import TinySpec, write_tiny_llama
from guardian_supervisor.memory.estimate import (
    DEFAULT_GPU_OVERHEAD,
    MIB,
    Measured,
    estimate,
    is_host_buffer,
    kv_row_bytes,
    parse_buffer_lines,
    swa_cells,
)
from guardian_supervisor.memory.gguf_info import ModelInfo, read_model_info


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    """2 layers, 128 wide, 4 heads of 32, n_ff 512, f32: the shape most calibration used."""
    d = tmp_path_factory.mktemp("m")
    return read_model_info(write_tiny_llama(d / "t.gguf", TinySpec(n_ff=512)))


@pytest.fixture(scope="module")
def gqa(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    d = tmp_path_factory.mktemp("g")
    spec = TinySpec(n_embd=256, n_head=8, n_head_kv=2, n_ff=1024, dtype="f16")
    return read_model_info(write_tiny_llama(d / "g.gguf", spec))


def test_kv_row_bytes() -> None:
    assert kv_row_bytes("f16", 128) == 256
    assert kv_row_bytes("F32", 128) == 512
    assert kv_row_bytes("q8_0", 128) == 4 * 34
    assert kv_row_bytes("q4_0", 128) == 4 * 18
    assert kv_row_bytes("q6_0", 64) == 2 * 26
    assert kv_row_bytes("iq4_nl", 33) == 2 * 18  # rounds up to whole blocks
    with pytest.raises(ValueError, match="unknown KV cache type"):
        kv_row_bytes("q3_k", 128)


@pytest.mark.parametrize(("kv", "mib"), [("f16", 4.0), ("q8_0", 2.125), ("q4_0", 1.125), ("f32", 8.0)])
def test_kv_bytes_match_llama_server(tiny: ModelInfo, kv: str, mib: float) -> None:
    # llama-server 11434 printed "CPU KV buffer size = 4.00 / 2.12 / 1.12 / 8.00 MiB" here
    e = estimate(tiny, ctx=4096, kv_type=kv, gpu=False)
    assert e.kv_bytes == int(mib * MIB)
    assert e.kv_per_layer == [e.kv_bytes // 2] * 2


def test_ctx_is_padded_to_256_cells(tiny: ModelInfo) -> None:
    e = estimate(tiny, ctx=1000, gpu=False)
    assert e.ctx == 1024
    assert e.kv_bytes == 1 * MIB  # measured: 1.00 MiB for -c 1000


def test_mixed_kv_types_and_gqa(gqa: ModelInfo) -> None:
    e = estimate(gqa, ctx=8192, kv_type="q8_0", kv_type_v="q4_0", gpu=False)
    per_layer = 8192 * (kv_row_bytes("q8_0", 2 * 32) + kv_row_bytes("q4_0", 2 * 32))
    assert e.kv_per_layer == [per_layer] * 2


# (n_ff, ctx, flash_attn, n_parallel, n_ubatch, compute MiB that llama-server 11434 printed)
MEASURED_COMPUTE = [
    (512, 4096, True, 1, 512, 8.27),
    (512, 4096, False, 1, 512, 42.01),
    (512, 4096, True, 4, 512, 5.27),
    (512, 4096, False, 2, 512, 22.01),
    (512, 32768, True, 1, 512, 36.27),
    (512, 8192, True, 1, 128, 3.07),
    (512, 8192, True, 1, 2048, 49.07),
    (512, 8192, False, 1, 1024, 164.03),
    (256, 512, True, 1, 512, 2.77),
    (2048, 512, True, 1, 512, 13.77),
]


@pytest.mark.parametrize(("n_ff", "ctx", "fa", "np_", "ub", "mib"), MEASURED_COMPUTE)
def test_compute_matches_measurements(
    tmp_path: Path, n_ff: int, ctx: int, fa: bool, np_: int, ub: int, mib: float
) -> None:
    info = read_model_info(write_tiny_llama(tmp_path / "m.gguf", TinySpec(n_ff=n_ff)))
    e = estimate(info, ctx=ctx, n_parallel=np_, n_ubatch=ub, flash_attn=fa, gpu=False)
    assert e.compute_bytes == pytest.approx(mib * MIB, rel=0.01)


def test_compute_grows_with_ctx_and_ubatch(tiny: ModelInfo) -> None:
    small = estimate(tiny, ctx=4096, gpu=False).compute_bytes
    assert estimate(tiny, ctx=16384, gpu=False).compute_bytes > small
    assert estimate(tiny, ctx=4096, n_ubatch=1024, gpu=False).compute_bytes > small
    # the ubatch never exceeds the batch or the context
    assert estimate(tiny, ctx=256, n_ubatch=512, gpu=False).compute_bytes == (
        estimate(tiny, ctx=256, n_ubatch=256, gpu=False).compute_bytes
    )
    unified = estimate(tiny, ctx=4096, n_parallel=4, kv_unified=True, gpu=False).compute_bytes
    assert unified > estimate(tiny, ctx=4096, n_parallel=4, gpu=False).compute_bytes


def test_ik_flavor_reserves_logits_for_the_whole_ubatch(tiny: ModelInfo) -> None:
    up = estimate(tiny, ctx=512, flavor="upstream", gpu=False).compute_bytes
    ik = estimate(tiny, ctx=512, flavor="ik", gpu=False).compute_bytes
    # ik's fused FFN keeps fewer activations than upstream's (measured: demo-b at -c 2048,
    # 6.01 MiB on ik, 7.52 upstream); its logits reservation is the floor
    assert ik >= 512 * 4 * (tiny.n_embd + tiny.n_vocab) and up > 0


def test_gpu_vs_cpu_weights_and_overhead(tiny: ModelInfo) -> None:
    cpu = estimate(tiny, ctx=4096, gpu=False)
    gpu = estimate(tiny, ctx=4096, gpu=True)
    assert cpu.overhead_bytes == 0 and gpu.overhead_bytes == DEFAULT_GPU_OVERHEAD
    assert cpu.weights_bytes == tiny.weights_bytes
    # token_embd stays in host memory when the model has its own output matrix
    assert gpu.weights_bytes == tiny.weights_bytes - tiny.tensor_bytes("token_embd.weight")
    assert gpu.layer_weight_bytes == tiny.layer_bytes
    assert estimate(tiny, ctx=4096, gpu=True, overhead_bytes=0).total_bytes == gpu.total_bytes - (
        DEFAULT_GPU_OVERHEAD
    )
    for e in (cpu, gpu):
        parts = e.weights_bytes + e.kv_bytes + e.compute_bytes + e.output_bytes + e.overhead_bytes
        assert e.total_bytes == parts
        assert e.per_layer_bytes == [w + k for w, k in zip(e.layer_weight_bytes, e.kv_per_layer, strict=True)]


def test_to_dict_in_mib(tiny: ModelInfo) -> None:
    d = estimate(tiny, ctx=4096, gpu=False).to_dict()
    assert d["kv_mib"] == 4.0 and d["ctx"] == 4096
    assert d["compute_mib"] == pytest.approx(8.27, abs=0.01)
    assert len(d["layer_weight_mib"]) == 2
    assert d["total_mib"] == pytest.approx(
        d["weights_mib"] + d["kv_mib"] + d["compute_mib"] + d["output_mib"], abs=0.02
    )


def test_bad_arguments(tiny: ModelInfo) -> None:
    with pytest.raises(ValueError):
        estimate(tiny, ctx=0)
    with pytest.raises(ValueError):
        estimate(tiny, ctx=512, kv_type="q9_9")
    with pytest.raises(ValueError, match="flavor"):
        estimate(tiny, ctx=512, flavor="vllm")


# --- parse_buffer_lines ------------------------------------------------------------------

# Lines captured from upstream llama-server build 11434 at -lv 4 (CPU, AMX repacking on).
UPSTREAM_LOG = """\
0.00.007.099 I common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute    unaccounted |
0.00.007.124 I common_memory_breakdown_print: |   - Host               |                   17 =     0 +       8 +       9                |
0.00.007.764 I load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
0.00.009.227 I load_tensors:          AMX model buffer size =     4.50 MiB
0.00.009.240 I load_tensors:   CPU_Mapped model buffer size =     4.77 MiB
0.00.011.908 I llama_context:        CPU  output buffer size =     0.00 MiB
0.00.012.029 I llama_kv_cache:        CPU KV buffer size =     8.00 MiB
0.00.012.031 I llama_kv_cache: size =    8.00 MiB (  4096 cells,   4 layers,  1/1 seqs), K (f16):    4.00 MiB, V (f16):    4.00 MiB
0.00.016.944 I sched_reserve:        CPU compute buffer size =     9.52 MiB
0.01.497.712 I common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute    unaccounted |
0.01.497.717 I common_memory_breakdown_print: |   - Host               |                   22 =     4 +       8 +       9                |
0.01.497.718 I common_memory_breakdown_print: |   - AMX                |                    4 =     4 +       0 +       0                |
"""

# ik_llama.cpp / older llama.cpp format: "buffer size" without "model", llama_kv_cache_init.
IK_LOG = """\
0.00.889.774 I llm_load_tensors: offloaded 33/33 layers to GPU
0.00.889.784 I llm_load_tensors:        CPU buffer size =   245.62 MiB
0.00.889.786 I llm_load_tensors:      CUDA0 buffer size =  5049.71 MiB
0.01.764.910 I llama_kv_cache_init:      CUDA0 KV buffer size =   640.00 MiB
0.01.764.923 I llama_new_context_with_model: KV self size  =  640.00 MiB, K (f16):  320.00 MiB, V (f16):  320.00 MiB
0.01.765.952 I llama_new_context_with_model:  CUDA_Host  output buffer size =     0.19 MiB
0.01.774.506 I llama_new_context_with_model:      CUDA0 compute buffer size =   162.00 MiB
0.01.774.514 I llama_new_context_with_model:  CUDA_Host compute buffer size =    12.01 MiB
0.01.774.520 I llama_new_context_with_model: graph splits = 2
"""


def test_parse_upstream_lines() -> None:
    m = parse_buffer_lines(UPSTREAM_LOG.splitlines())
    assert m.source == "buffers"
    assert m.model_bytes == round(4.50 * MIB) + round(4.77 * MIB)
    assert m.kv_bytes == 8 * MIB  # the "llama_kv_cache: size = ..." summary is not counted twice
    assert m.compute_bytes == round(9.52 * MIB)
    assert m.output_bytes == 0
    assert set(m.per_device) == {"AMX", "CPU_Mapped", "CPU"}
    assert m.per_device["CPU"].kv == 8 * MIB
    assert m.offloaded_layers is None
    assert m.device_totals() == {}  # all host buffers
    assert m.total_bytes == m.model_bytes + m.kv_bytes + m.compute_bytes


def test_parse_ik_lines() -> None:
    m = parse_buffer_lines(IK_LOG.splitlines())
    assert (m.offloaded_layers, m.total_layers) == (33, 33)
    assert m.per_device["CUDA0"].model == round(5049.71 * MIB)
    assert m.per_device["CUDA0"].kv == 640 * MIB
    assert m.per_device["CUDA0"].compute == 162 * MIB
    assert m.per_device["CPU"].model == round(245.62 * MIB)
    assert m.per_device["CUDA_Host"].output == round(0.19 * MIB)
    assert m.per_device["CUDA_Host"].compute == round(12.01 * MIB)
    assert m.kv_bytes == 640 * MIB  # "KV self size" is a summary, not a buffer
    assert m.device_totals() == {"CUDA0": round(5049.71 * MIB) + 640 * MIB + 162 * MIB}
    assert set(m.device_totals(include_host=True)) == {"CUDA0", "CPU", "CUDA_Host"}


def test_parse_upstream_gpu_split_and_offload() -> None:
    lines = [
        "load_tensors: offloading 28 repeating layers to GPU",
        "load_tensors: offloaded 29/29 layers to GPU",
        "load_tensors:   CPU_Mapped model buffer size =   292.36 MiB",
        "load_tensors:        CUDA0 model buffer size =  2000.00 MiB",
        "load_tensors:        CUDA1 model buffer size =  1500.50 MiB",
        "llama_kv_cache:      CUDA0 KV buffer size =   112.00 MiB",
        "llama_kv_cache:      CUDA1 KV buffer size =    80.00 MiB",
        "sched_reserve:      CUDA0 compute buffer size =   300.75 MiB",
        "sched_reserve:  CUDA_Host compute buffer size =    24.01 MiB",
        "~llama_context:  CUDA_Host compute buffer size of 39.1719 MiB, does not match expectation of 15.35 MiB",
    ]
    m = parse_buffer_lines(lines)
    assert (m.offloaded_layers, m.total_layers) == (29, 29)
    assert m.device_totals() == {
        "CUDA0": round(2000 * MIB) + 112 * MIB + round(300.75 * MIB),
        "CUDA1": round(1500.5 * MIB) + 80 * MIB,
    }
    assert m.compute_bytes == round(300.75 * MIB) + round(24.01 * MIB)  # the warning is ignored


def test_parse_breakdown_table_only() -> None:
    lines = [
        "common_memory_breakdown_print: | memory breakdown [MiB] | total   free     self   model   context   compute    unaccounted |",
        "common_memory_breakdown_print: |   - CUDA0 (RTX 5090)   | 32606 = 9999 + (9999 = 9999 +     1 +     1) +        1 |",
        "llama_memory_breakdown_print: | memory breakdown [MiB] | total   free     self   model   context   compute    unaccounted |",
        "llama_memory_breakdown_print: |   - CUDA0 (RTX 5090)   | 32606 = 1057 + (29365 = 28609 +     397 +     358) +        2183 |",
        "llama_memory_breakdown_print: |   - Host               |                 30956 = 30940 +       0 +      16                |",
    ]
    m = parse_buffer_lines(lines)
    assert m.source == "breakdown"  # and only the last table counts
    assert m.per_device["CUDA0"].model == 28609 * MIB
    assert m.per_device["CUDA0"].kv == 397 * MIB
    assert m.per_device["CUDA0"].compute == 358 * MIB
    assert m.per_device["Host"].model == 30940 * MIB
    assert m.device_totals() == {"CUDA0": (28609 + 397 + 358) * MIB}


def test_parse_nothing() -> None:
    m = parse_buffer_lines(["srv  llama_server: listening on http://127.0.0.1:8080", ""])
    assert m == Measured()
    assert m.source == "none" and m.total_bytes == 0


@pytest.mark.parametrize(
    ("name", "host"),
    [("CPU", True), ("CPU_Mapped", True), ("CPU_REPACK", True), ("CUDA_Host", True), ("AMX", True),
     ("Host", True), ("CUDA0", False), ("ROCm1", False), ("Vulkan0", False), ("MTL0", False)],
)  # fmt: skip
def test_is_host_buffer(name: str, host: bool) -> None:
    assert is_host_buffer(name) is host


def test_kv_row_bytes_q8_kv() -> None:
    # ik's q8_KV: one byte a value plus an 8-byte row header; any case spelling.
    assert kv_row_bytes("q8_KV", 256) == 256 + 8
    assert kv_row_bytes("Q8_kv", 100) == 128 + 8


def test_ik_host_prompt_cache_counts_on_cpu_only(tiny: ModelInfo) -> None:
    base = estimate(tiny, ctx=512, gpu=False, flavor="ik")
    capped = estimate(tiny, ctx=512, gpu=False, flavor="ik", host_cache_bytes=1024 * 2**20)
    assert capped.total_bytes - base.total_bytes == 1024 * 2**20 == capped.host_cache_bytes
    on_gpu = estimate(tiny, ctx=512, gpu=True, flavor="ik", host_cache_bytes=1024 * 2**20)
    assert on_gpu.host_cache_bytes == 0  # host RAM, not VRAM
    assert capped.to_dict()["host_cache_mib"] == 1024.0


# --- sliding-window attention (figures measured on Gemma 3 270M, upstream and ik) ----------


@pytest.fixture(scope="module")
def gemma() -> ModelInfo:
    path = Path(__file__).resolve().parents[3] / "data" / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not path.exists():
        pytest.skip(f"{path} missing: run 'make models'")
    return read_model_info(path)


def test_gemma3_swa_layer_pattern(gemma: ModelInfo) -> None:
    assert gemma.sliding_window == 512
    assert len(gemma.swa_layers) == 18
    assert [il for il, swa in enumerate(gemma.swa_layers) if not swa] == [5, 11, 17]  # 5 local : 1 global


# (ctx, -np, unified, ubatch, swa_full, SWA cells llama-server printed)
SWA_CELLS = [
    (4096, 1, False, 512, False, 1024),
    (1000, 1, False, 512, False, 1024),  # min(context, window + ubatch)
    (8192, 1, False, 256, False, 768),
    (8192, 2, False, 512, False, 2 * 1024),
    (8192, 2, True, 512, False, 1536),
    (8192, 4, True, 512, False, 2560),
    (8192, 1, False, 512, True, 8192),
]


@pytest.mark.parametrize(("ctx", "n_par", "unified", "ub", "full", "cells"), SWA_CELLS)
def test_swa_cells_match_llama_server(
    gemma: ModelInfo, ctx: int, n_par: int, unified: bool, ub: int, full: bool, cells: int
) -> None:
    padded = -(-ctx // 256) * 256
    assert swa_cells(gemma, padded, n_par, ub, unified, "upstream", full) == cells
    assert swa_cells(gemma, padded, n_par, ub, unified, "ik", full) == padded  # ik: full size


@pytest.mark.parametrize(
    ("ctx", "kv", "n_par", "unified", "kv_mib", "compute_mib"),
    [
        (4096, "f16", 1, False, 27.0, 23.28),  # printed: 12.00 + 15.00 MiB KV, 23.28 compute
        (8192, "q8_0", 1, False, 12.75 + 7.97, 27.81),
        (8192, "f16", 2, True, 24.0 + 22.5, 27.78),
        (8192, "f16", 4, True, 24.0 + 37.5, 28.78),
    ],
)
def test_gemma3_kv_and_compute(
    gemma: ModelInfo, ctx: int, kv: str, n_par: int, unified: bool, kv_mib: float, compute_mib: float
) -> None:
    e = estimate(gemma, ctx=ctx, kv_type=kv, n_parallel=n_par, kv_unified=unified, gpu=False)
    assert abs(e.kv_bytes / MIB - kv_mib) <= 0.02
    assert abs(e.compute_bytes / MIB / compute_mib - 1) <= 0.025  # q8_0 adds ~0.5 MiB unmodelled
    full = estimate(
        gemma, ctx=ctx, kv_type=kv, n_parallel=n_par, kv_unified=unified, gpu=False, swa_full=True
    )
    assert full.kv_bytes > e.kv_bytes
