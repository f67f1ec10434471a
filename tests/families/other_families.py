"""Tiny random-weight GGUFs of three families the dense-llama writer does not cover.

- deepseek2: multi-head latent attention (MLA) in the mainline layout (split attn_k_b /
  attn_v_b, one KV head of kv_lora_rank + rope dims), one dense leading layer, then MoE
  layers with a shared expert. The MLA sizes are DeepSeek's own (kv_lora_rank 512, rope 64):
  ik_llama.cpp converts mainline MLA files only for exactly those (llama-hparams.cpp).
- granitehybrid: Mamba2 layers with an attention layer among them (head_count_kv 0 marks a
  recurrent layer, llama-model's granite-hybrid.cpp).
- bert: a non-causal encoder with a WordPiece vocabulary, served with --embeddings.

Tensor names come from gguf-py's TENSOR_NAMES, required hparams from llama.cpp build
11434's src/models/*.cpp. numpy shape (rows, cols) becomes ggml ne = [cols, rows]; a 3-d
ggml tensor {a, b, c} is numpy (c, b, a).
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


# --- deepseek2 (MLA) ------------------------------------------------------------------------


@dataclass(frozen=True)
class DeepSeek2Spec:
    n_layer: int = 3
    n_layer_dense_lead: int = 1
    n_embd: int = 256
    n_head: int = 4  # ik wants n_head / n_head_kv (here n_head) divisible by 4
    q_lora_rank: int = 64
    kv_lora_rank: int = 512  # DeepSeek's; ik refuses other MLA sizes
    qk_rope_dim: int = 64
    qk_nope_dim: int = 64
    v_head_dim: int = 64
    n_ff: int = 512  # the dense leading layers
    n_ff_exp: int = 128
    n_expert: int = 4
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ctx_train: int = 16384
    dtype: str = "f16"
    seed: int = 11
    name: str = "tiny-deepseek2"


def write_deepseek2(path: Path, spec: DeepSeek2Spec = DeepSeek2Spec()) -> Path:
    """A deepseek2 GGUF as convert_hf_to_gguf.py writes one today (MLA: K = compressed latent
    + rope part in one KV head, V = the latent; the per-head sizes in *_mla keys)."""
    s = spec
    r = _Weights(s.seed, s.dtype)
    k_mla = s.qk_nope_dim + s.qk_rope_dim

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(s.name)
        w.add_file_type(_file_type(s.dtype))
        w.add_block_count(s.n_layer)
        w.add_context_length(s.n_ctx_train)
        w.add_embedding_length(s.n_embd)
        w.add_feed_forward_length(s.n_ff)
        w.add_head_count(s.n_head)
        w.add_head_count_kv(1)
        w.add_key_length(s.kv_lora_rank + s.qk_rope_dim)
        w.add_value_length(s.kv_lora_rank)
        w.add_key_length_mla(k_mla)
        w.add_value_length_mla(s.v_head_dim)
        w.add_rope_dimension_count(s.qk_rope_dim)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_leading_dense_block_count(s.n_layer_dense_lead)
        w.add_q_lora_rank(s.q_lora_rank)
        w.add_kv_lora_rank(s.kv_lora_rank)
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_shared_count(s.n_expert_shared)
        w.add_expert_feed_forward_length(s.n_ff_exp)
        w.add_expert_weights_scale(1.0)
        w.add_expert_weights_norm(False)
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
        n_vocab = _spm_vocab(w)

        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, s.n_embd))
        for i in range(s.n_layer):
            w.add_tensor(_name(T.ATTN_NORM, i), r.ones(s.n_embd))
            w.add_tensor(_name(T.ATTN_Q_A_NORM, i), r.ones(s.q_lora_rank))
            w.add_tensor(_name(T.ATTN_KV_A_NORM, i), r.ones(s.kv_lora_rank))
            w.add_tensor(_name(T.ATTN_Q_A, i), r.mat(s.q_lora_rank, s.n_embd))
            w.add_tensor(_name(T.ATTN_Q_B, i), r.mat(s.n_head * k_mla, s.q_lora_rank))
            w.add_tensor(_name(T.ATTN_KV_A_MQA, i), r.mat(s.kv_lora_rank + s.qk_rope_dim, s.n_embd))
            w.add_tensor(_name(T.ATTN_K_B, i), r.mat(s.n_head, s.kv_lora_rank, s.qk_nope_dim))
            w.add_tensor(_name(T.ATTN_V_B, i), r.mat(s.n_head, s.v_head_dim, s.kv_lora_rank))
            w.add_tensor(_name(T.ATTN_OUT, i), r.mat(s.n_embd, s.n_head * s.v_head_dim))
            w.add_tensor(_name(T.FFN_NORM, i), r.ones(s.n_embd))
            if i < s.n_layer_dense_lead:
                w.add_tensor(_name(T.FFN_GATE, i), r.mat(s.n_ff, s.n_embd))
                w.add_tensor(_name(T.FFN_UP, i), r.mat(s.n_ff, s.n_embd))
                w.add_tensor(_name(T.FFN_DOWN, i), r.mat(s.n_embd, s.n_ff))
                continue
            w.add_tensor(_name(T.FFN_GATE_INP, i), r.mat(s.n_expert, s.n_embd).astype(np.float32))
            w.add_tensor(_name(T.FFN_GATE_EXP, i), r.mat(s.n_expert, s.n_ff_exp, s.n_embd))
            w.add_tensor(_name(T.FFN_UP_EXP, i), r.mat(s.n_expert, s.n_ff_exp, s.n_embd))
            w.add_tensor(_name(T.FFN_DOWN_EXP, i), r.mat(s.n_expert, s.n_embd, s.n_ff_exp))
            sh = s.n_ff_exp * s.n_expert_shared
            w.add_tensor(_name(T.FFN_GATE_SHEXP, i), r.mat(sh, s.n_embd))
            w.add_tensor(_name(T.FFN_UP_SHEXP, i), r.mat(sh, s.n_embd))
            w.add_tensor(_name(T.FFN_DOWN_SHEXP, i), r.mat(s.n_embd, sh))
        w.add_tensor(_name(T.OUTPUT_NORM), r.ones(s.n_embd))
        w.add_tensor(_name(T.OUTPUT), r.mat(n_vocab, s.n_embd))

    return _write_atomic(path, "deepseek2", fill)


# --- granitehybrid (Mamba2 + attention) -------------------------------------------------------


@dataclass(frozen=True)
class GraniteHybridSpec:
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    attention_layers: tuple[int, ...] = (2,)  # the rest are Mamba2 layers
    n_layer: int = 4
    n_ff: int = 512
    ssm_d_conv: int = 4
    ssm_d_state: int = 128
    ssm_n_head: int = 8  # ssm.time_step_rank: Mamba2 heads of d_inner / n_head each
    ssm_n_group: int = 1
    n_ctx_train: int = 16384
    dtype: str = "f16"
    seed: int = 12
    name: str = "tiny-granitehybrid"

    @property
    def ssm_d_inner(self) -> int:
        return 2 * self.n_embd  # llama.cpp supports an expansion factor of 2 only

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def write_granitehybrid(path: Path, spec: GraniteHybridSpec = GraniteHybridSpec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)
    d_inner, ds, g = s.ssm_d_inner, s.ssm_d_state, s.ssm_n_group
    d_conv_ch = d_inner + 2 * g * ds
    d_in_proj = 2 * d_inner + 2 * g * ds + s.ssm_n_head
    kv_heads = [s.n_head_kv if i in s.attention_layers else 0 for i in range(s.n_layer)]

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(s.name)
        w.add_file_type(_file_type(s.dtype))
        w.add_block_count(s.n_layer)
        w.add_context_length(s.n_ctx_train)
        w.add_embedding_length(s.n_embd)
        w.add_feed_forward_length(s.n_ff)
        w.add_head_count(s.n_head)
        w.add_head_count_kv(kv_heads)  # 0 = a recurrent (Mamba2) layer
        w.add_rope_dimension_count(s.head_dim)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_ssm_conv_kernel(s.ssm_d_conv)
        w.add_ssm_inner_size(d_inner)
        w.add_ssm_state_size(ds)
        w.add_ssm_time_step_rank(s.ssm_n_head)
        w.add_ssm_group_count(g)
        n_vocab = _spm_vocab(w)

        hd = s.head_dim
        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, s.n_embd))
        for i in range(s.n_layer):
            w.add_tensor(_name(T.ATTN_NORM, i), r.ones(s.n_embd))
            if kv_heads[i]:
                w.add_tensor(_name(T.ATTN_Q, i), r.mat(s.n_head * hd, s.n_embd))
                w.add_tensor(_name(T.ATTN_K, i), r.mat(kv_heads[i] * hd, s.n_embd))
                w.add_tensor(_name(T.ATTN_V, i), r.mat(kv_heads[i] * hd, s.n_embd))
                w.add_tensor(_name(T.ATTN_OUT, i), r.mat(s.n_embd, s.n_head * hd))
            else:
                w.add_tensor(_name(T.SSM_IN, i), r.mat(d_in_proj, s.n_embd))
                w.add_tensor(_name(T.SSM_CONV1D, i), r.mat(d_conv_ch, s.ssm_d_conv).astype(np.float32))
                w.add_tensor(_name(T.SSM_CONV1D, i, "bias"), r.zeros(d_conv_ch))
                w.add_tensor(_name(T.SSM_DT, i, "bias"), r.zeros(s.ssm_n_head))
                w.add_tensor(_name(T.SSM_A, i, ""), -r.ones(s.ssm_n_head, 1))  # A = -exp(A_log) < 0
                w.add_tensor(_name(T.SSM_D, i, ""), r.ones(s.ssm_n_head, 1))
                w.add_tensor(_name(T.SSM_NORM, i), r.ones(g, d_inner // g))
                w.add_tensor(_name(T.SSM_OUT, i), r.mat(s.n_embd, d_inner))
            w.add_tensor(_name(T.FFN_NORM, i), r.ones(s.n_embd))
            w.add_tensor(_name(T.FFN_GATE, i), r.mat(s.n_ff, s.n_embd))
            w.add_tensor(_name(T.FFN_UP, i), r.mat(s.n_ff, s.n_embd))
            w.add_tensor(_name(T.FFN_DOWN, i), r.mat(s.n_embd, s.n_ff))
        w.add_tensor(_name(T.OUTPUT_NORM), r.ones(s.n_embd))
        w.add_tensor(_name(T.OUTPUT), r.mat(n_vocab, s.n_embd))

    return _write_atomic(path, "granitehybrid", fill)


# --- bert (embedding encoder) ------------------------------------------------------------------


@dataclass(frozen=True)
class BertSpec:
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_ff: int = 512
    n_ctx_train: int = 8192
    dtype: str = "f16"
    seed: int = 13
    name: str = "tiny-bert"


_WPM_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _wpm_vocab() -> list[str]:
    """WordPiece: the specials, single letters and digits, their ## continuations, a few words."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,!?'-")
    words = ["hello", "world", "the", "is", "of", "a", "cat", "dog"]
    return _WPM_SPECIAL + chars + [f"##{c}" for c in chars] + [w for w in words if w not in chars]


def write_bert(path: Path, spec: BertSpec = BertSpec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)
    tokens = _wpm_vocab()

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(s.name)
        w.add_file_type(_file_type(s.dtype))
        w.add_block_count(s.n_layer)
        w.add_context_length(s.n_ctx_train)
        w.add_embedding_length(s.n_embd)
        w.add_feed_forward_length(s.n_ff)
        w.add_head_count(s.n_head)
        w.add_layer_norm_eps(1e-12)
        w.add_causal_attention(False)
        w.add_pooling_type(gguf.PoolingType.MEAN)
        w.add_tokenizer_model("bert")
        w.add_token_list(tokens)
        w.add_token_types(
            [int(gguf.TokenType.CONTROL)] * len(_WPM_SPECIAL)
            + [int(gguf.TokenType.NORMAL)] * (len(tokens) - len(_WPM_SPECIAL))
        )
        w.add_token_type_count(2)
        w.add_pad_token_id(0)
        w.add_unk_token_id(1)
        w.add_bos_token_id(2)  # [CLS]
        w.add_sep_token_id(3)
        w.add_mask_token_id(4)
        w.add_add_bos_token(True)
        w.add_add_sep_token(True)

        e = s.n_embd
        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(len(tokens), e))
        w.add_tensor(_name(T.TOKEN_TYPES), r.mat(2, e).astype(np.float32))  # added as a view: must be f32
        w.add_tensor(_name(T.POS_EMBD), r.mat(s.n_ctx_train, e))
        w.add_tensor(_name(T.TOKEN_EMBD_NORM), r.ones(e))
        w.add_tensor(_name(T.TOKEN_EMBD_NORM, None, "bias"), r.zeros(e))
        for i in range(s.n_layer):
            for t in (T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT):
                w.add_tensor(_name(t, i), r.mat(e, e))
                w.add_tensor(_name(t, i, "bias"), r.zeros(e))
            for t in (T.ATTN_OUT_NORM, T.LAYER_OUT_NORM):
                w.add_tensor(_name(t, i), r.ones(e))
                w.add_tensor(_name(t, i, "bias"), r.zeros(e))
            w.add_tensor(_name(T.FFN_UP, i), r.mat(s.n_ff, e))
            w.add_tensor(_name(T.FFN_UP, i, "bias"), r.zeros(s.n_ff))
            w.add_tensor(_name(T.FFN_DOWN, i), r.mat(e, s.n_ff))
            w.add_tensor(_name(T.FFN_DOWN, i, "bias"), r.zeros(e))

    return _write_atomic(path, "bert", fill)


WRITERS: dict[str, Callable[[Path], Path]] = {
    "deepseek2": write_deepseek2,
    "granitehybrid": write_granitehybrid,
    "bert": write_bert,
}


def write_all(models_dir: Path) -> dict[str, Path]:
    """`<family>.gguf` for each family here, in `models_dir`."""
    return {fam: writer(Path(models_dir) / f"tiny-{fam}.gguf") for fam, writer in WRITERS.items()}
