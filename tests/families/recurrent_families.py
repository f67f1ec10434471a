"""Tiny random-weight GGUFs of recurrent and hybrid-recurrent families, for memory tests.

- mamba: Mamba 1 (a selective-scan SSM; x_proj and dt_proj, A per channel and state).
- mamba2: Mamba 2 (heads of d_inner / time_step_rank, grouped B and C, A and D per head).
- rwkv6: RWKV v6 "Finch" (token-shift lerps, data-dependent decay, one wkv state per head).
- rwkv7: RWKV v7 "Goose" (LoRA-style decay / in-context learning rate / value-residual / gate).
- qwen3next: Qwen3-Next, gated delta-net linear attention on three of every four layers
  (full_attention_interval), gated full attention with Q/K norms on the fourth, and a
  routed MoE with a shared expert on every layer.
- qwen35moe: Qwen3.5's MoE, the same hybrid with split beta / alpha projections and M-RoPE.

A pure recurrent model keeps no KV cache, only a per-sequence f32 state per layer
(llama_hparams::n_embd_r / n_embd_s): Mamba's conv row and SSM state, RWKV's token-shift
rows and wkv state. Tensor names come from gguf-py's TENSOR_NAMES; required hparams and
shapes from llama.cpp build 11434's src/models/{mamba,mamba2,rwkv6,rwkv7,qwen3next,qwen35moe}.cpp and
ik_llama.cpp 0.1.5's llama-load-tensors.cpp (qwen3next, qwen35moe, mamba). numpy shape (rows, cols)
becomes ggml ne = [cols, rows]; a ggml tensor {a, b, c, d} is numpy (d, c, b, a).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from guardian_supervisor.demo_models import add_demo_vocab as _spm_vocab
from guardian_supervisor.demo_models import write_gguf_atomic as _write_atomic
from tests.families.common import Weights as _Weights
from tests.families.common import file_type as _file_type
from tests.families.common import tname as _name

T = gguf.MODEL_TENSOR


def _common(w: gguf.GGUFWriter, name: str, dtype: str, n_layer: int, n_ctx: int, n_embd: int) -> None:
    w.add_name(name)
    w.add_file_type(_file_type(dtype))
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)


# --- mamba / mamba2 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MambaSpec:
    n_layer: int = 3
    n_embd: int = 256
    ssm_d_conv: int = 4
    ssm_d_state: int = 16
    ssm_dt_rank: int = 16  # Mamba 1: the rank of dt_proj
    n_ctx_train: int = 16384
    dtype: str = "f16"
    seed: int = 21
    name: str = "tiny-mamba"

    @property
    def ssm_d_inner(self) -> int:
        return 2 * self.n_embd  # llama.cpp supports an expansion factor of 2 only


def write_mamba(path: Path, spec: MambaSpec = MambaSpec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)
    d_inner, ds = s.ssm_d_inner, s.ssm_d_state

    def fill(w: gguf.GGUFWriter) -> None:
        _common(w, s.name, s.dtype, s.n_layer, s.n_ctx_train, s.n_embd)
        w.add_feed_forward_length(0)
        w.add_head_count(0)  # no attention; convert_hf_to_gguf writes 0 too
        w.add_layer_norm_rms_eps(1e-5)
        w.add_ssm_conv_kernel(s.ssm_d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(ds)
        w.add_ssm_time_step_rank(s.ssm_dt_rank)
        n_vocab = _spm_vocab(w)

        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, s.n_embd))
        for i in range(s.n_layer):
            w.add_tensor(_name(T.ATTN_NORM, i), r.ones(s.n_embd))
            w.add_tensor(_name(T.SSM_IN, i), r.mat(2 * d_inner, s.n_embd))
            w.add_tensor(_name(T.SSM_CONV1D, i), r.vec(d_inner, s.ssm_d_conv))
            w.add_tensor(_name(T.SSM_CONV1D, i, "bias"), r.zeros(d_inner))
            w.add_tensor(_name(T.SSM_X, i), r.mat(s.ssm_dt_rank + 2 * ds, d_inner))
            w.add_tensor(_name(T.SSM_DT, i), r.mat(d_inner, s.ssm_dt_rank))
            w.add_tensor(_name(T.SSM_DT, i, "bias"), r.zeros(d_inner))
            w.add_tensor(_name(T.SSM_A, i, ""), -r.ones(d_inner, ds))  # A = -exp(A_log) < 0
            w.add_tensor(_name(T.SSM_D, i, ""), r.ones(d_inner))
            w.add_tensor(_name(T.SSM_OUT, i), r.mat(s.n_embd, d_inner))
        w.add_tensor(_name(T.OUTPUT_NORM), r.ones(s.n_embd))
        w.add_tensor(_name(T.OUTPUT), r.mat(n_vocab, s.n_embd))

    return _write_atomic(path, "mamba", fill)


@dataclass(frozen=True)
class Mamba2Spec:
    n_layer: int = 3
    n_embd: int = 256
    ssm_d_conv: int = 4
    ssm_d_state: int = 128
    ssm_n_head: int = 8  # ssm.time_step_rank: heads of d_inner / n_head (64, as Mamba2's)
    ssm_n_group: int = 1
    n_ctx_train: int = 16384
    dtype: str = "f16"
    seed: int = 22
    name: str = "tiny-mamba2"

    @property
    def ssm_d_inner(self) -> int:
        return 2 * self.n_embd


def write_mamba2(path: Path, spec: Mamba2Spec = Mamba2Spec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)
    d_inner, ds, g = s.ssm_d_inner, s.ssm_d_state, s.ssm_n_group
    conv_dim = d_inner + 2 * g * ds

    def fill(w: gguf.GGUFWriter) -> None:
        _common(w, s.name, s.dtype, s.n_layer, s.n_ctx_train, s.n_embd)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_ssm_conv_kernel(s.ssm_d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(ds)
        w.add_ssm_time_step_rank(s.ssm_n_head)
        w.add_ssm_group_count(g)
        n_vocab = _spm_vocab(w)

        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, s.n_embd))
        for i in range(s.n_layer):
            w.add_tensor(_name(T.ATTN_NORM, i), r.ones(s.n_embd))
            w.add_tensor(_name(T.SSM_IN, i), r.mat(d_inner + conv_dim + s.ssm_n_head, s.n_embd))
            w.add_tensor(_name(T.SSM_CONV1D, i), r.vec(conv_dim, s.ssm_d_conv))
            w.add_tensor(_name(T.SSM_CONV1D, i, "bias"), r.zeros(conv_dim))
            w.add_tensor(_name(T.SSM_DT, i, "bias"), r.zeros(s.ssm_n_head))
            w.add_tensor(_name(T.SSM_A, i, ""), -r.ones(s.ssm_n_head, 1))
            w.add_tensor(_name(T.SSM_D, i, ""), r.ones(s.ssm_n_head, 1))
            w.add_tensor(_name(T.SSM_NORM, i), r.ones(g, d_inner // g))
            w.add_tensor(_name(T.SSM_OUT, i), r.mat(s.n_embd, d_inner))
        w.add_tensor(_name(T.OUTPUT_NORM), r.ones(s.n_embd))
        w.add_tensor(_name(T.OUTPUT), r.mat(n_vocab, s.n_embd))

    return _write_atomic(path, "mamba2", fill)


# --- rwkv6 / rwkv7 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RWKV6Spec:
    n_layer: int = 3
    n_embd: int = 256
    head_size: int = 64  # wkv.head_size: n_embd / head_size heads
    n_ff: int = 896  # channel-mix width, 3.5 x n_embd as RWKV6's
    time_mix_extra_dim: int = 32
    time_decay_extra_dim: int = 64
    n_ctx_train: int = 16384
    dtype: str = "f16"
    seed: int = 23
    name: str = "tiny-rwkv6"


def _rwkv_common(w: gguf.GGUFWriter, arch: str, head_size: int, n_ff: int) -> None:
    w.add_feed_forward_length(n_ff)
    w.add_head_count(0)  # RWKV has no attention heads; its converters write 0
    w.add_layer_norm_eps(1e-5)
    w.add_uint32(f"{arch}.wkv.head_size", head_size)
    w.add_uint32(f"{arch}.token_shift_count", 2)  # llama.cpp asserts 2


def _rwkv_embd_and_norms(w: gguf.GGUFWriter, r: _Weights, n_vocab: int, e: int) -> None:
    w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, e))
    w.add_tensor(_name(T.TOKEN_EMBD_NORM), r.ones(e))  # "LN0", applied to the embeddings
    w.add_tensor(_name(T.TOKEN_EMBD_NORM, None, "bias"), r.zeros(e))


def _rwkv_layer_norms(w: gguf.GGUFWriter, r: _Weights, i: int, e: int) -> None:
    for t in (T.ATTN_NORM, T.ATTN_NORM_2):
        w.add_tensor(_name(t, i), r.ones(e))
        w.add_tensor(_name(t, i, "bias"), r.zeros(e))
    w.add_tensor(_name(T.TIME_MIX_LN, i), r.ones(e))  # the wkv output's group norm
    w.add_tensor(_name(T.TIME_MIX_LN, i, "bias"), r.zeros(e))


def _rwkv_output(w: gguf.GGUFWriter, r: _Weights, n_vocab: int, e: int) -> None:
    w.add_tensor(_name(T.OUTPUT_NORM), r.ones(e))
    w.add_tensor(_name(T.OUTPUT_NORM, None, "bias"), r.zeros(e))
    w.add_tensor(_name(T.OUTPUT), r.mat(n_vocab, e))


def write_rwkv6(path: Path, spec: RWKV6Spec = RWKV6Spec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)
    e = s.n_embd

    def fill(w: gguf.GGUFWriter) -> None:
        _common(w, s.name, s.dtype, s.n_layer, s.n_ctx_train, e)
        _rwkv_common(w, "rwkv6", s.head_size, s.n_ff)
        w.add_uint32("rwkv6.time_mix_extra_dim", s.time_mix_extra_dim)
        w.add_uint32("rwkv6.time_decay_extra_dim", s.time_decay_extra_dim)
        w.add_uint32("rwkv6.rescale_every_n_layers", 0)
        n_vocab = _spm_vocab(w)

        _rwkv_embd_and_norms(w, r, n_vocab, e)
        for i in range(s.n_layer):
            _rwkv_layer_norms(w, r, i, e)
            w.add_tensor(_name(T.TIME_MIX_W1, i), r.mat(5 * s.time_mix_extra_dim, e))
            w.add_tensor(_name(T.TIME_MIX_W2, i), r.mat(5, e, s.time_mix_extra_dim))
            w.add_tensor(_name(T.TIME_MIX_LERP_X, i), r.vec(1, 1, e))
            w.add_tensor(_name(T.TIME_MIX_LERP_FUSED, i), r.vec(5, 1, 1, e))
            w.add_tensor(_name(T.TIME_MIX_FIRST, i), r.vec(e // s.head_size, s.head_size))
            w.add_tensor(_name(T.TIME_MIX_DECAY, i), r.vec(e))
            w.add_tensor(_name(T.TIME_MIX_DECAY_W1, i), r.mat(s.time_decay_extra_dim, e))
            w.add_tensor(_name(T.TIME_MIX_DECAY_W2, i), r.mat(e, s.time_decay_extra_dim))
            for t in (
                T.TIME_MIX_KEY,
                T.TIME_MIX_VALUE,
                T.TIME_MIX_RECEPTANCE,
                T.TIME_MIX_GATE,
                T.TIME_MIX_OUTPUT,
            ):
                w.add_tensor(_name(t, i), r.mat(e, e))
            w.add_tensor(_name(T.CHANNEL_MIX_LERP_K, i), r.vec(1, 1, e))
            w.add_tensor(_name(T.CHANNEL_MIX_LERP_R, i), r.vec(1, 1, e))
            w.add_tensor(_name(T.CHANNEL_MIX_KEY, i), r.mat(s.n_ff, e))
            w.add_tensor(_name(T.CHANNEL_MIX_VALUE, i), r.mat(e, s.n_ff))
            w.add_tensor(_name(T.CHANNEL_MIX_RECEPTANCE, i), r.mat(e, e))
        _rwkv_output(w, r, n_vocab, e)

    return _write_atomic(path, "rwkv6", fill)


@dataclass(frozen=True)
class RWKV7Spec:
    n_layer: int = 3
    n_embd: int = 256
    head_size: int = 64
    n_ff: int = 1024  # channel-mix width, 4 x n_embd as RWKV7's
    decay_lora: int = 32
    iclr_lora: int = 32
    value_res_mix_lora: int = 32
    gate_lora: int = 64
    n_ctx_train: int = 16384
    dtype: str = "f16"
    seed: int = 24
    name: str = "tiny-rwkv7"


def write_rwkv7(path: Path, spec: RWKV7Spec = RWKV7Spec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)
    e = s.n_embd

    def fill(w: gguf.GGUFWriter) -> None:
        _common(w, s.name, s.dtype, s.n_layer, s.n_ctx_train, e)
        _rwkv_common(w, "rwkv7", s.head_size, s.n_ff)
        w.add_uint32("rwkv7.attention.decay_lora_rank", s.decay_lora)
        w.add_uint32("rwkv7.attention.iclr_lora_rank", s.iclr_lora)
        w.add_uint32("rwkv7.attention.value_residual_mix_lora_rank", s.value_res_mix_lora)
        w.add_uint32("rwkv7.attention.gate_lora_rank", s.gate_lora)
        n_vocab = _spm_vocab(w)

        _rwkv_embd_and_norms(w, r, n_vocab, e)
        for i in range(s.n_layer):
            _rwkv_layer_norms(w, r, i, e)
            v_lora = s.iclr_lora if i == 0 else s.value_res_mix_lora  # layer 0's is unused
            for t0, t1, t2, rank in (
                (T.TIME_MIX_W0, T.TIME_MIX_W1, T.TIME_MIX_W2, s.decay_lora),
                (T.TIME_MIX_A0, T.TIME_MIX_A1, T.TIME_MIX_A2, s.iclr_lora),
                (T.TIME_MIX_V0, T.TIME_MIX_V1, T.TIME_MIX_V2, v_lora),
            ):
                w.add_tensor(_name(t0, i), r.vec(e))
                w.add_tensor(_name(t1, i), r.mat(rank, e))
                w.add_tensor(_name(t2, i), r.mat(e, rank))
            w.add_tensor(_name(T.TIME_MIX_G1, i), r.mat(s.gate_lora, e))
            w.add_tensor(_name(T.TIME_MIX_G2, i), r.mat(e, s.gate_lora))
            w.add_tensor(_name(T.TIME_MIX_LERP_FUSED, i), r.vec(6, 1, 1, e))
            for t in (T.TIME_MIX_K_K, T.TIME_MIX_K_A, T.TIME_MIX_R_K):
                w.add_tensor(_name(t, i), r.vec(e))
            for t in (T.TIME_MIX_KEY, T.TIME_MIX_VALUE, T.TIME_MIX_RECEPTANCE, T.TIME_MIX_OUTPUT):
                w.add_tensor(_name(t, i), r.mat(e, e))
            w.add_tensor(_name(T.CHANNEL_MIX_LERP_K, i), r.vec(1, 1, e))
            w.add_tensor(_name(T.CHANNEL_MIX_KEY, i), r.mat(s.n_ff, e))
            w.add_tensor(_name(T.CHANNEL_MIX_VALUE, i), r.mat(e, s.n_ff))
        _rwkv_output(w, r, n_vocab, e)

    return _write_atomic(path, "rwkv7", fill)


# --- qwen3next (gated delta-net + gated attention, MoE with a shared expert) ---------------------


@dataclass(frozen=True)
class Qwen3NextSpec:
    """Qwen3-Next-80B-A3B's proportions, scaled down by 8: E 2048 -> 256; 16 query heads of
    256 -> 8 of 64 (Q = 2E), 2 KV heads; delta-net with 16 key heads and 32 value heads of
    128 -> 4 and 8 of 64 (keys E, values 2E); 10 of 512 experts of E / 4 -> 10 of 16 of
    E / 4, and a shared expert of E / 4. arch "qwen35moe" (Qwen3.5-35B-A3B's layout) splits
    the delta-net's beta/alpha projection in two and adds M-RoPE sections; same state."""

    arch: str = "qwen3next"  # or "qwen35moe"
    n_layer: int = 4
    full_attention_interval: int = 4  # layer il is full attention where (il + 1) % interval == 0
    n_embd: int = 256
    n_head: int = 8
    n_head_kv: int = 2
    head_dim: int = 64
    ssm_d_conv: int = 4
    ssm_d_state: int = 64  # the head size of delta-net keys and values
    ssm_n_group: int = 4  # key heads
    ssm_n_v_head: int = 8  # ssm.time_step_rank: value heads
    n_expert: int = 16
    n_expert_used: int = 10
    n_ff_exp: int = 64
    n_ff_shexp: int = 64
    n_ctx_train: int = 32768
    dtype: str = "f16"
    seed: int = 25
    name: str = "tiny-qwen3next"

    @property
    def ssm_d_inner(self) -> int:
        return self.ssm_d_state * self.ssm_n_v_head  # value_dim

    def is_recurrent(self, il: int) -> bool:
        return (il + 1) % self.full_attention_interval != 0


def write_qwen3next(path: Path, spec: Qwen3NextSpec = Qwen3NextSpec()) -> Path:
    s = spec
    if s.arch not in ("qwen3next", "qwen35moe"):
        raise ValueError(f"arch must be qwen3next or qwen35moe, not {s.arch!r}")
    r = _Weights(s.seed, s.dtype)
    e, hd = s.n_embd, s.head_dim
    key_dim = s.ssm_d_state * s.ssm_n_group
    value_dim = s.ssm_d_inner
    conv_dim = 2 * key_dim + value_dim

    def fill(w: gguf.GGUFWriter) -> None:
        _common(w, s.name, s.dtype, s.n_layer, s.n_ctx_train, e)
        w.add_feed_forward_length(s.n_ff_exp)
        w.add_head_count(s.n_head)
        w.add_head_count_kv(s.n_head_kv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(10000000.0)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.n_ff_exp)
        w.add_expert_shared_feed_forward_length(s.n_ff_shexp)
        w.add_ssm_conv_kernel(s.ssm_d_conv)
        w.add_ssm_inner_size(value_dim)
        w.add_ssm_state_size(s.ssm_d_state)
        w.add_ssm_time_step_rank(s.ssm_n_v_head)
        w.add_ssm_group_count(s.ssm_n_group)
        w.add_uint32(f"{s.arch}.full_attention_interval", s.full_attention_interval)
        if s.arch == "qwen35moe":  # M-RoPE: text positions only here, sections summing to rope / 2
            w.add_array(f"{s.arch}.rope.dimension_sections", [11, 11, 10, 0])
        n_vocab = _spm_vocab(w)

        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, e))
        for i in range(s.n_layer):
            w.add_tensor(_name(T.ATTN_NORM, i), r.ones(e))
            w.add_tensor(_name(T.ATTN_POST_NORM, i), r.ones(e))
            if not s.is_recurrent(i):
                w.add_tensor(_name(T.ATTN_Q, i), r.mat(2 * s.n_head * hd, e))  # query and its gate
                w.add_tensor(_name(T.ATTN_K, i), r.mat(s.n_head_kv * hd, e))
                w.add_tensor(_name(T.ATTN_V, i), r.mat(s.n_head_kv * hd, e))
                w.add_tensor(_name(T.ATTN_OUT, i), r.mat(e, s.n_head * hd))
                w.add_tensor(_name(T.ATTN_Q_NORM, i), r.ones(hd))
                w.add_tensor(_name(T.ATTN_K_NORM, i), r.ones(hd))
            else:
                w.add_tensor(_name(T.ATTN_QKV, i), r.mat(conv_dim, e))
                w.add_tensor(_name(T.ATTN_GATE, i), r.mat(value_dim, e))  # z
                w.add_tensor(_name(T.SSM_CONV1D, i), r.vec(conv_dim, s.ssm_d_conv))
                w.add_tensor(_name(T.SSM_DT, i, "bias"), r.zeros(s.ssm_n_v_head))
                w.add_tensor(_name(T.SSM_A, i, ""), -r.ones(s.ssm_n_v_head))
                if s.arch == "qwen35moe":
                    w.add_tensor(_name(T.SSM_BETA, i), r.mat(s.ssm_n_v_head, e))
                    w.add_tensor(_name(T.SSM_ALPHA, i), r.mat(s.ssm_n_v_head, e))
                else:
                    w.add_tensor(_name(T.SSM_BETA_ALPHA, i), r.mat(2 * s.ssm_n_v_head, e))
                w.add_tensor(_name(T.SSM_NORM, i), r.ones(s.ssm_d_state))
                w.add_tensor(_name(T.SSM_OUT, i), r.mat(e, value_dim))
            w.add_tensor(_name(T.FFN_GATE_INP, i), r.mat(s.n_expert, e).astype(np.float32))
            w.add_tensor(_name(T.FFN_GATE_EXP, i), r.mat(s.n_expert, s.n_ff_exp, e))
            w.add_tensor(_name(T.FFN_UP_EXP, i), r.mat(s.n_expert, s.n_ff_exp, e))
            w.add_tensor(_name(T.FFN_DOWN_EXP, i), r.mat(s.n_expert, e, s.n_ff_exp))
            w.add_tensor(_name(T.FFN_GATE_INP_SHEXP, i), r.vec(e))
            w.add_tensor(_name(T.FFN_GATE_SHEXP, i), r.mat(s.n_ff_shexp, e))
            w.add_tensor(_name(T.FFN_UP_SHEXP, i), r.mat(s.n_ff_shexp, e))
            w.add_tensor(_name(T.FFN_DOWN_SHEXP, i), r.mat(e, s.n_ff_shexp))
        w.add_tensor(_name(T.OUTPUT_NORM), r.ones(e))
        w.add_tensor(_name(T.OUTPUT), r.mat(n_vocab, e))

    return _write_atomic(path, s.arch, fill)


def write_qwen35moe(path: Path) -> Path:
    return write_qwen3next(path, Qwen3NextSpec(arch="qwen35moe", seed=26, name="tiny-qwen35moe"))


WRITERS: dict[str, Callable[[Path], Path]] = {
    "mamba": write_mamba,
    "mamba2": write_mamba2,
    "rwkv6": write_rwkv6,
    "rwkv7": write_rwkv7,
    "qwen3next": write_qwen3next,
    "qwen35moe": write_qwen35moe,
}


def write_all(models_dir: Path) -> dict[str, Path]:
    """`tiny-<family>.gguf` for each family here, in `models_dir`."""
    return {fam: writer(Path(models_dir) / f"tiny-{fam}.gguf") for fam, writer in WRITERS.items()}
