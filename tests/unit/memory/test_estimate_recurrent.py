"""The estimator's recurrent-state and compute arithmetic for pure recurrent models (Mamba 1/2,
RWKV6/7) and the gated delta-net hybrid qwen3next, on generated GGUFs (no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guardian_supervisor.memory.estimate import (
    estimate,
    kv_row_bytes,
    recurrent_state_bytes,
)
from guardian_supervisor.memory.gguf_info import ModelInfo, _delta_net_layers, read_model_info
from tests.families.recurrent_families import (
    Mamba2Spec,
    MambaSpec,
    Qwen3NextSpec,
    RWKV6Spec,
    RWKV7Spec,
    write_all,
    write_qwen3next,
    write_rwkv7,
)

PURE = ("mamba", "mamba2", "rwkv6", "rwkv7")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelInfo]:
    return {fam: read_model_info(p) for fam, p in write_all(tmp_path_factory.mktemp("rec")).items()}


def _per_seq_state(fam: str) -> int:
    """One recurrent layer's f32 state for one sequence, from the spec (n_embd_r + n_embd_s)."""
    if fam in ("rwkv6", "rwkv7"):
        s6 = RWKV6Spec() if fam == "rwkv6" else RWKV7Spec()
        return (2 * s6.n_embd + s6.n_embd * s6.head_size) * 4
    if fam == "mamba":
        m = MambaSpec()
        return ((m.ssm_d_conv - 1) * m.ssm_d_inner + m.ssm_d_state * m.ssm_d_inner) * 4
    if fam == "mamba2":
        m2 = Mamba2Spec()
        conv = (m2.ssm_d_conv - 1) * (m2.ssm_d_inner + 2 * m2.ssm_n_group * m2.ssm_d_state)
        return (conv + m2.ssm_d_state * m2.ssm_d_inner) * 4
    q = Qwen3NextSpec()
    conv = (q.ssm_d_conv - 1) * (q.ssm_d_inner + 2 * q.ssm_n_group * q.ssm_d_state)
    # the delta-net state: one d_state x d_state matrix per value head
    return (conv + q.ssm_d_state * q.ssm_d_state * q.ssm_n_v_head) * 4


def test_metadata_marks_recurrent_layers(models: dict[str, ModelInfo]) -> None:
    for fam in PURE:
        info = models[fam]
        assert info.recurrent_layers == (True,) * info.n_layer, fam
    assert models["rwkv6"].wkv_head_size == RWKV6Spec().head_size and models["rwkv6"].token_shift_count == 2
    assert models["mamba"].wkv_head_size == 0
    q = Qwen3NextSpec()
    qn = models["qwen3next"]
    assert qn.recurrent_layers == tuple(q.is_recurrent(il) for il in range(q.n_layer))
    assert qn.recurrent_layers == (True, True, True, False)  # full attention every 4th layer
    assert qn.is_moe and qn.n_expert_used == q.n_expert_used


def test_delta_net_layers_from_interval_or_array() -> None:
    def getter(values: dict[str, Any]) -> Any:
        return lambda key, default=None: values.get(key, default)

    assert _delta_net_layers("qwen3next", getter({}), 8) == (True, True, True, False) * 2  # default 4
    assert _delta_net_layers("qwen35moe", getter({"full_attention_interval": 2}), 4) == (True, False) * 2
    flags = [True, False, False, True]
    assert _delta_net_layers("qwen35", getter({"attention.recurrent_layers": flags}), 4) == tuple(flags)
    assert _delta_net_layers("qwen3", getter({"full_attention_interval": 4}), 4) == ()


@pytest.mark.parametrize("fam", [*PURE, "qwen3next"])
def test_state_is_f32_per_sequence_whatever_the_context_and_kv_type(
    models: dict[str, ModelInfo], fam: str
) -> None:
    info = models[fam]
    per_seq = _per_seq_state(fam)
    one = recurrent_state_bytes(info, 1)
    assert one == [per_seq if r else 0 for r in info.recurrent_layers]
    assert recurrent_state_bytes(info, 3) == [3 * b for b in one]
    small = estimate(info, ctx=2048, kv_type="f16", gpu=False)
    big = estimate(info, ctx=16384, kv_type="q8_0", n_parallel=2, gpu=False)
    assert small.rs_bytes == sum(one) and big.rs_bytes == 2 * sum(one)
    if fam in PURE:  # no KV cache at all: the state is the whole context memory
        assert small.kv_bytes == small.rs_bytes and big.kv_bytes == big.rs_bytes


def test_qwen3next_kv_cache_on_the_attention_layers_only(models: dict[str, ModelInfo]) -> None:
    q = Qwen3NextSpec()
    info = models["qwen3next"]
    e = estimate(info, ctx=8192, kv_type="q8_0", gpu=False)
    attn = 8192 * 2 * kv_row_bytes("q8_0", q.n_head_kv * q.head_dim)
    n_attn = sum(not r for r in info.recurrent_layers)
    assert e.kv_bytes == n_attn * attn + e.rs_bytes
    assert [k for k, r in zip(e.kv_per_layer, info.recurrent_layers, strict=True) if not r] == [attn]


@pytest.mark.parametrize("fam", PURE)
def test_pure_recurrent_compute_does_not_grow_with_context(models: dict[str, ModelInfo], fam: str) -> None:
    info = models[fam]
    small = estimate(info, ctx=2048, gpu=False)
    big = estimate(info, ctx=32768, kv_type="q8_0", gpu=False)
    assert small.compute_bytes == big.compute_bytes > 0  # no attention: no mask, no KQ
    # ... but it does with the ubatch
    assert estimate(info, ctx=2048, n_ubatch=1024, gpu=False).compute_bytes > 1.9 * small.compute_bytes
    # and the graph carries every sequence's state
    more = estimate(info, ctx=2048, n_parallel=4, gpu=False)
    assert more.compute_bytes > small.compute_bytes


def test_rwkv7_compute_follows_its_time_mix_then_its_channel_mix(tmp_path: Path) -> None:
    """20E per token until the channel mix (F + 16E) is the wider, from F > 8E on."""
    base = read_model_info(write_rwkv7(tmp_path / "a.gguf", RWKV7Spec(n_embd=128, n_ff=512)))
    wide = read_model_info(write_rwkv7(tmp_path / "b.gguf", RWKV7Spec(n_embd=128, n_ff=2048)))
    ub = 512
    state = 2 * 128 * 4 + 128 * 64 * 4
    assert estimate(base, ctx=2048, n_ubatch=ub, gpu=False).compute_bytes == ub * 4 * (20 * 128 + 10) + state
    assert (
        estimate(wide, ctx=2048, n_ubatch=ub, gpu=False).compute_bytes
        == ub * 4 * (2048 + 16 * 128 + 10) + state
    )


def test_qwen3next_compute_is_the_larger_of_moe_and_delta_net(tmp_path: Path) -> None:
    """Wider delta-net values (more value heads) raise the compute buffer only once the
    delta-net's peak passes the MoE's."""
    base = read_model_info(write_qwen3next(tmp_path / "a.gguf"))
    wide = read_model_info(write_qwen3next(tmp_path / "b.gguf", Qwen3NextSpec(ssm_n_v_head=32)))
    narrow = read_model_info(write_qwen3next(tmp_path / "c.gguf", Qwen3NextSpec(ssm_n_v_head=4)))
    c = {
        n: estimate(i, ctx=4096, gpu=False).compute_bytes
        for n, i in (("b", base), ("w", wide), ("n", narrow))
    }
    assert c["w"] > c["b"]
    # below the MoE's peak only the per-sequence state differs
    state = {n: max(recurrent_state_bytes(i, 1)) for n, i in (("b", base), ("n", narrow))}
    assert c["b"] - c["n"] == state["b"] - state["n"]


def test_qwen35moe_has_qwen3next_state_and_layers(models: dict[str, ModelInfo]) -> None:
    a, b = models["qwen3next"], models["qwen35moe"]
    assert b.architecture == "qwen35moe" and b.recurrent_layers == a.recurrent_layers
    assert recurrent_state_bytes(b, 2) == recurrent_state_bytes(a, 2)
    assert estimate(b, ctx=8192, gpu=False).compute_bytes == estimate(a, ctx=8192, gpu=False).compute_bytes


def test_ik_holds_one_stream_and_one_state_whatever_np(models: dict[str, ModelInfo]) -> None:
    """ik_llama.cpp keeps one cache stream for all sequences and reserves its graph for one
    sequence: -np changes its state rows, not its compute buffer (measured on qwen3next)."""
    info = models["qwen3next"]
    one = estimate(info, ctx=4096, n_parallel=1, gpu=False, flavor="ik")
    three = estimate(info, ctx=4096, n_parallel=3, gpu=False, flavor="ik")
    assert three.compute_bytes == one.compute_bytes
    assert three.kv_bytes - one.kv_bytes == 2 * one.rs_bytes
    # upstream splits the cells per sequence: its mask shrinks with -np
    up = [estimate(info, ctx=4096, n_parallel=n, gpu=False).compute_bytes for n in (1, 3)]
    assert up[1] < up[0]
