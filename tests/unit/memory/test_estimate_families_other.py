"""The estimator's MLA, recurrent-state and encoder arithmetic on generated GGUFs (no server),
and parse_buffer_lines on a recurrent model's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian_supervisor.memory.estimate import (
    MIB,
    estimate,
    kv_layer_bytes,
    kv_row_bytes,
    parse_buffer_lines,
    recurrent_state_bytes,
)
from guardian_supervisor.memory.gguf_info import ModelInfo, read_model_info
from tests.families.other_families import (
    BertSpec,
    DeepSeek2Spec,
    GraniteHybridSpec,
    write_bert,
    write_deepseek2,
    write_granitehybrid,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelInfo]:
    d = tmp_path_factory.mktemp("fam")
    return {
        "deepseek2": read_model_info(write_deepseek2(d / "ds.gguf")),
        "granitehybrid": read_model_info(write_granitehybrid(d / "gh.gguf")),
        "bert": read_model_info(write_bert(d / "bert.gguf")),
    }


def test_metadata_of_each_family(models: dict[str, ModelInfo]) -> None:
    ds, gh, bert = models["deepseek2"], models["granitehybrid"], models["bert"]
    s = DeepSeek2Spec()
    assert ds.is_mla and ds.kv_lora_rank == s.kv_lora_rank and ds.rope_dim == s.qk_rope_dim
    assert ds.key_length == s.kv_lora_rank + s.qk_rope_dim and ds.n_head_kv == [1] * s.n_layer
    g = GraniteHybridSpec()
    assert gh.recurrent_layers == tuple(i not in g.attention_layers for i in range(g.n_layer))
    assert (gh.ssm_d_conv, gh.ssm_d_inner, gh.ssm_d_state, gh.ssm_n_group) == (4, 2 * g.n_embd, 128, 1)
    assert not gh.is_mla and gh.has_kv_cache
    assert not bert.has_kv_cache and not bert.recurrent_layers and bert.n_embd == BertSpec().n_embd


def test_mla_cache_is_one_latent_row_k_only(models: dict[str, ModelInfo]) -> None:
    ds = models["deepseek2"]
    row = DeepSeek2Spec().kv_lora_rank + DeepSeek2Spec().qk_rope_dim  # 576
    for kv in ("f16", "q8_0"):
        assert kv_layer_bytes(ds, 0, 2048, kv, kv, "upstream", True) == 2048 * kv_row_bytes(kv, row)
    # ik keeps the same row; without flash attention (its -mla 3) in the V type
    assert kv_layer_bytes(ds, 1, 1024, "f16", "q8_0", "ik", False) == 1024 * kv_row_bytes("q8_0", row)
    e = estimate(ds, ctx=8192, kv_type="f16", gpu=False)
    assert e.kv_bytes == ds.n_layer * 8192 * row * 2 and e.rs_bytes == 0


def test_recurrent_state_per_sequence_f32_whatever_the_kv_type(models: dict[str, ModelInfo]) -> None:
    gh = models["granitehybrid"]
    g = GraniteHybridSpec()
    conv = (g.ssm_d_conv - 1) * (g.ssm_d_inner + 2 * g.ssm_n_group * g.ssm_d_state)
    per_seq = (conv + g.ssm_d_state * g.ssm_d_inner) * 4
    one = recurrent_state_bytes(gh, 1)
    assert one == [0 if i in g.attention_layers else per_seq for i in range(g.n_layer)]
    assert recurrent_state_bytes(gh, 3) == [3 * b for b in one]  # -np multiplies it
    e16 = estimate(gh, ctx=4096, kv_type="f16", n_parallel=2, gpu=False)
    e8 = estimate(gh, ctx=4096, kv_type="q8_0", n_parallel=2, gpu=False)
    assert e16.rs_bytes == e8.rs_bytes == 2 * sum(one)
    # attention KV on the attention layer only
    attn = 4096 * 2 * g.n_head_kv * g.head_dim * 2
    assert e16.kv_bytes == attn + e16.rs_bytes
    assert [k for i, k in enumerate(e16.kv_per_layer) if i in g.attention_layers] == [attn]


def test_encoder_has_no_kv_and_a_context_free_compute_buffer(models: dict[str, ModelInfo]) -> None:
    bert = models["bert"]
    small = estimate(bert, ctx=2048, kv_type="f16", gpu=False)
    big = estimate(bert, ctx=8192, kv_type="q8_0", gpu=False)
    assert small.kv_bytes == big.kv_bytes == 0 and small.kv_per_layer == [0] * bert.n_layer
    assert small.compute_bytes == big.compute_bytes > 0
    # the ubatch attends to itself: a bigger ubatch grows the compute buffer quadratically
    assert (
        estimate(bert, ctx=2048, n_ubatch=1024, n_batch=1024, gpu=False).compute_bytes
        > 2 * small.compute_bytes
    )


# Captured from upstream llama-server build 11434 at -lv 4 on the generated granitehybrid model.
RECURRENT_LOG = """\
0.00.007.995 I load_tensors:   CPU_Mapped model buffer size =     6.34 MiB
0.00.008.232 I llama_context:        CPU  output buffer size =     0.00 MiB
0.00.008.349 I llama_kv_cache:        CPU KV buffer size =     1.00 MiB
0.00.008.648 I llama_kv_cache: size =    1.00 MiB (  2048 cells,   1 layers,  1/1 seqs), K (f16):    0.50 MiB, V (f16):    0.50 MiB
0.00.008.885 I llama_memory_recurrent:        CPU RS buffer size =     0.78 MiB
0.00.008.896 I llama_memory_recurrent: size =    0.78 MiB (     1 cells,   4 layers,  1 seqs  0 rs_seq), R (f32):    0.03 MiB, S (f32):    0.75 MiB, P (f32):    0.00 MiB
0.00.009.788 I sched_reserve:        CPU compute buffer size =    11.30 MiB
"""


def test_parse_recurrent_state_buffer() -> None:
    m = parse_buffer_lines(RECURRENT_LOG.splitlines())
    assert m.model_bytes == round(6.34 * MIB)  # the RS line is not a model buffer
    assert m.rs_bytes == round(0.78 * MIB)
    assert m.kv_bytes == 1 * MIB + m.rs_bytes  # state counts as context memory, like KV
    assert m.per_device["CPU"].kv == m.kv_bytes
    assert m.total_bytes == m.model_bytes + m.kv_bytes + round(11.30 * MIB)


def test_writers_are_atomic_and_deterministic(tmp_path: Path) -> None:
    a = write_bert(tmp_path / "a.gguf")
    b = write_bert(tmp_path / "b.gguf")
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))
