"""The estimator's sliding-window and chunked-attention arithmetic on generated llama4,
gemma2 and cohere2 GGUFs (no server): which layers are local, how many cells they hold,
the second (SWA) mask, and llama4's interleaved dense / MoE compute term."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian_supervisor.memory.estimate import (
    MIB,
    estimate,
    kv_row_bytes,
    llama4_activation_floats,
    moe_activation_floats,
    swa_cells,
)
from guardian_supervisor.memory.gguf_info import LLAMA4_ATTN_CHUNK, ModelInfo, read_model_info, swa_window
from tests.families.swa_families import (
    LLAMA4_ALL_MOE,
    Cohere2Spec,
    Gemma2Spec,
    Llama4Spec,
    write_cohere2,
    write_gemma2,
    write_llama4,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelInfo]:
    d = tmp_path_factory.mktemp("swa-fam")
    return {
        "llama4": read_model_info(write_llama4(d / "l4.gguf")),
        "llama4-all-moe": read_model_info(write_llama4(d / "l4s.gguf", LLAMA4_ALL_MOE)),
        "llama4-no-chunks": read_model_info(write_llama4(d / "l4n.gguf", Llama4Spec(sliding_window=0))),
        "gemma2": read_model_info(write_gemma2(d / "g2.gguf")),
        "cohere2": read_model_info(write_cohere2(d / "c2.gguf")),
    }


def test_window_from_the_key_or_the_architecture_default() -> None:
    # llama4 chunks by 8192 whatever the key says, unless it says 0
    assert swa_window("llama4", None) == swa_window("llama4", 4096) == LLAMA4_ATTN_CHUNK == 8192
    assert swa_window("llama4", 0) == 0
    assert swa_window("gemma2", None) == 4096 and swa_window("gemma2", 1024) == 1024
    assert swa_window("cohere2", 2048) == 2048 and swa_window("qwen3", None) == 0


def test_local_layers_of_each_family(models: dict[str, ModelInfo]) -> None:
    l4, g2, c2 = models["llama4"], models["gemma2"], models["cohere2"]
    assert l4.sliding_window == 8192 and l4.swa_layers == (True, True, True, False)  # 3 chunked : 1
    assert l4.moe_layer_step == 2 and l4.is_moe and l4.n_ff_exp == Llama4Spec().n_ff_exp
    g = Gemma2Spec()
    assert g2.sliding_window == g.sliding_window and g2.swa_layers == tuple(
        il % 2 == 0 for il in range(g.n_layer)
    )
    assert c2.sliding_window == Cohere2Spec().sliding_window and c2.swa_layers == (True, True, True, False)
    no_chunks = models["llama4-no-chunks"]
    assert no_chunks.sliding_window == 0 and not any(no_chunks.swa_layers)


def test_chunked_layers_hold_a_chunk_plus_a_ubatch(models: dict[str, ModelInfo]) -> None:
    l4 = models["llama4"]
    # upstream: pad256(8192 + 512) = 8704 (measured), never above the context
    assert swa_cells(l4, 16384, 1, 512, False, "upstream", False) == 8704
    assert swa_cells(l4, 4096, 1, 512, False, "upstream", False) == 4096
    assert swa_cells(l4, 32768, 2, 512, True, "upstream", False) == 16896  # both sequences' chunks
    # ik keeps every layer full-size, as --swa-full does upstream
    assert swa_cells(l4, 16384, 1, 512, False, "ik", False) == 16384
    assert swa_cells(l4, 16384, 1, 512, False, "upstream", True) == 16384
    row = kv_row_bytes("f16", Llama4Spec().n_head_kv * Llama4Spec().head_dim)
    e = estimate(l4, ctx=16384, gpu=False)
    assert e.kv_per_layer == [8704 * 2 * row] * 3 + [16384 * 2 * row]
    assert estimate(l4, ctx=16384, gpu=False, flavor="ik").kv_bytes == 4 * 16384 * 2 * row


def test_the_swa_mask_is_there_even_when_the_window_holds_the_whole_context(
    models: dict[str, ModelInfo],
) -> None:
    """Upstream builds two f16 masks (full and SWA) for any model with local layers: at
    -c 2048 under gemma2's 4096 window both are 512 x 2048 (measured), and --swa-full keeps
    both (measured on llama4). ik builds its two masks the same size as well."""
    g2 = models["gemma2"]
    assert swa_cells(g2, 2048, 1, 512, False, "upstream", False) == 2048
    activations = 512 * 4 * (3 * g2.n_ff + 5 * g2.n_embd + 10)
    assert estimate(g2, ctx=2048, gpu=False).compute_bytes == activations + 2 * 512 * 2048 * 2
    assert estimate(g2, ctx=2048, gpu=False, swa_full=True).compute_bytes == activations + 2 * 512 * 2048 * 2
    # a llama4 with chunking off has one mask only
    plain = models["llama4-no-chunks"]
    plain_act = 512 * 4 * (llama4_activation_floats(plain) + 10)
    assert estimate(plain, ctx=2048, gpu=False).compute_bytes == plain_act + 512 * 2048 * 2


def test_llama4_compute_takes_the_wider_of_dense_and_moe_layers(
    models: dict[str, ModelInfo], tmp_path: Path
) -> None:
    l4, scout = models["llama4"], models["llama4-all-moe"]
    s = Llama4Spec()
    e, f, k = s.n_embd, s.n_ff_exp, s.n_expert_used
    moe = 3 * f * k + 5 * e + e * k  # experts wider than E: + E x K
    assert llama4_activation_floats(scout) == moe == moe_activation_floats(scout)
    assert llama4_activation_floats(l4) == max(moe, 3 * s.n_ff + 5 * e)  # Maverick: dense layers
    narrow = read_model_info(write_llama4(tmp_path / "n.gguf", Llama4Spec(n_ff_exp=e, moe_layer_step=1)))
    assert llama4_activation_floats(narrow) == 3 * e + 5 * e  # F = E: no E x K term


def test_estimates_at_the_measured_points(models: dict[str, ModelInfo]) -> None:
    """Buffers upstream 11434 and ik_llama.cpp 0.1.5 printed for these models (CPU, -fa on,
    -np 1): KV and compute in MiB."""
    cases = [
        ("llama4", "upstream", 16384, "f16", 20.75, 31.53),
        ("llama4", "upstream", 4096, "f16", 8.00, 15.03),
        ("llama4-all-moe", "upstream", 16384, "f16", 20.75, 29.78),
        ("gemma2", "upstream", 8192, "f16", 40.62, 16.78),
        ("gemma2", "upstream", 2048, "q8_0", 6.90, 8.34),
        ("cohere2", "upstream", 8192, "f16", 7.75, 17.53),
        ("llama4", "ik", 16384, "f16", 32.00, 37.51),  # ik: full-size cache, dense layers peak
        ("llama4-all-moe", "ik", 4096, "q8_0", 4.25, 11.26),  # the shared expert peaks
        ("gemma2", "ik", 8192, "f16", 52.00, 19.76),
        ("cohere2", "ik", 8192, "f16", 16.00, 22.01),
    ]
    for fam, fork, ctx, kv, kv_mib, compute_mib in cases:
        e = estimate(models[fam], ctx=ctx, kv_type=kv, gpu=False, flavor=fork)
        assert abs(e.kv_bytes / MIB - kv_mib) < 0.01, (fam, fork, ctx, kv, e.to_dict())
        assert abs(e.compute_bytes / MIB / compute_mib - 1) < 0.015, (fam, fork, ctx, kv, e.to_dict())
