"""Tiny random-weight GGUFs of the sliding-window and chunked-attention families.

- llama4: chunked attention (llama.cpp's LLAMA_SWA_TYPE_CHUNKED): three of every four
  layers attend only within fixed 8192-token chunks, the fourth to everything. The chunk
  is hard-coded in llama.cpp (llama4.cpp: n_swa = 8192 unless the GGUF says
  `llama4.attention.sliding_window = 0`, which turns chunking off); the FFN interleaves
  dense layers with routed-MoE layers (`interleave_moe_layer_step`, 2 as in Maverick;
  `llama4-all-moe` is Scout's layout, step 1), each MoE layer with one shared expert as
  wide as a routed one.
- gemma2: standard sliding window on every other layer (even layers local, odd global,
  set_swa_pattern(2)), the window from `gemma2.attention.sliding_window`; post-attention
  and post-FFN norms, logit soft-capping, output tied to the token embeddings. 26 layers
  (Gemma 2 2B's count): ik_llama.cpp's graph aborts on any other than 26, 42 or 46.
- cohere2: standard sliding window, three local layers to one global
  (set_swa_pattern(4)); LayerNorm (no bias), a parallel attention/FFN block, a logit
  scale, output tied to the token embeddings.

Tensor names come from gguf-py's TENSOR_NAMES, required hparams from llama.cpp build
11434's src/models/{llama4,gemma2,cohere2}.cpp (ik_llama.cpp's llama-hparams.cpp asks for
the same keys). numpy shape (rows, cols) becomes ggml ne = [cols, rows].
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


def _attention(w: gguf.GGUFWriter, r: _Weights, i: int, e: int, n_head: int, n_head_kv: int, hd: int) -> None:
    w.add_tensor(_name(T.ATTN_Q, i), r.mat(n_head * hd, e))
    w.add_tensor(_name(T.ATTN_K, i), r.mat(n_head_kv * hd, e))
    w.add_tensor(_name(T.ATTN_V, i), r.mat(n_head_kv * hd, e))
    w.add_tensor(_name(T.ATTN_OUT, i), r.mat(e, n_head * hd))


def _dense_ffn(w: gguf.GGUFWriter, r: _Weights, i: int, e: int, f: int) -> None:
    w.add_tensor(_name(T.FFN_GATE, i), r.mat(f, e))
    w.add_tensor(_name(T.FFN_UP, i), r.mat(f, e))
    w.add_tensor(_name(T.FFN_DOWN, i), r.mat(e, f))


# --- llama4 (chunked attention, interleaved dense / MoE) ---------------------------------------


@dataclass(frozen=True)
class Llama4Spec:
    n_layer: int = 4  # layers 0-2 chunked, 3 global (llama.cpp's pattern of 4)
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 768  # the dense layers (Maverick: 3.2 E)
    n_ff_exp: int = 384  # each routed expert, and the shared expert (Maverick, Scout: 1.6 E)
    n_expert: int = 4
    n_expert_used: int = 1  # Llama 4 routes each token to one expert
    moe_layer_step: int = 2  # every second layer MoE (Maverick); 1 = all MoE (Scout)
    sliding_window: int | None = None  # None: no key (chunks of 8192); 0: chunking off
    n_ctx_train: int = 32768
    dtype: str = "f16"
    seed: int = 21
    name: str = "tiny-llama4"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def write_llama4(path: Path, spec: Llama4Spec = Llama4Spec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)
    hd = s.head_dim

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(s.name)
        w.add_file_type(_file_type(s.dtype))
        w.add_block_count(s.n_layer)
        w.add_context_length(s.n_ctx_train)
        w.add_embedding_length(s.n_embd)
        w.add_feed_forward_length(s.n_ff)
        w.add_head_count(s.n_head)
        w.add_head_count_kv(s.n_head_kv)
        w.add_rope_dimension_count(hd)  # llama4 asserts n_rot == head dim
        w.add_rope_freq_base(500000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.n_ff_exp)
        w.add_interleave_moe_layer_step(s.moe_layer_step)
        if s.sliding_window is not None:
            w.add_sliding_window(s.sliding_window)
        n_vocab = _spm_vocab(w)

        e = s.n_embd
        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, e))
        for i in range(s.n_layer):
            w.add_tensor(_name(T.ATTN_NORM, i), r.ones(e))
            _attention(w, r, i, e, s.n_head, s.n_head_kv, hd)
            w.add_tensor(_name(T.FFN_NORM, i), r.ones(e))
            if (i + 1) % s.moe_layer_step:
                _dense_ffn(w, r, i, e, s.n_ff)
                continue
            x, f = s.n_expert, s.n_ff_exp
            w.add_tensor(_name(T.FFN_GATE_INP, i), r.mat(x, e).astype(np.float32))
            w.add_tensor(_name(T.FFN_GATE_EXP, i), r.mat(x, f, e))
            w.add_tensor(_name(T.FFN_UP_EXP, i), r.mat(x, f, e))
            w.add_tensor(_name(T.FFN_DOWN_EXP, i), r.mat(x, e, f))
            w.add_tensor(_name(T.FFN_GATE_SHEXP, i), r.mat(f, e))
            w.add_tensor(_name(T.FFN_UP_SHEXP, i), r.mat(f, e))
            w.add_tensor(_name(T.FFN_DOWN_SHEXP, i), r.mat(e, f))
        w.add_tensor(_name(T.OUTPUT_NORM), r.ones(e))
        w.add_tensor(_name(T.OUTPUT), r.mat(n_vocab, e))

    return _write_atomic(path, "llama4", fill)


# --- gemma2 (sliding window on every other layer) ---------------------------------------------


@dataclass(frozen=True)
class Gemma2Spec:
    n_layer: int = 26  # ik_llama.cpp aborts on a gemma2 that is not 2B, 9B or 27B (26/42/46 layers)
    n_embd: int = 128
    n_head: int = 2
    n_head_kv: int = 1
    head_dim: int = 64
    n_ff: int = 512  # 4 E, as Gemma 2 2B
    sliding_window: int = 4096  # Gemma 2's own (also llama.cpp's default without the key)
    n_ctx_train: int = 8192
    dtype: str = "f16"
    seed: int = 22
    name: str = "tiny-gemma2"


def write_gemma2(path: Path, spec: Gemma2Spec = Gemma2Spec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(s.name)
        w.add_file_type(_file_type(s.dtype))
        w.add_block_count(s.n_layer)
        w.add_context_length(s.n_ctx_train)
        w.add_embedding_length(s.n_embd)
        w.add_feed_forward_length(s.n_ff)
        w.add_head_count(s.n_head)
        w.add_head_count_kv(s.n_head_kv)
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_sliding_window(s.sliding_window)
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)
        n_vocab = _spm_vocab(w)

        e = s.n_embd
        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, e))  # also the output matrix
        for i in range(s.n_layer):
            w.add_tensor(_name(T.ATTN_NORM, i), r.ones(e))
            _attention(w, r, i, e, s.n_head, s.n_head_kv, s.head_dim)
            w.add_tensor(_name(T.ATTN_POST_NORM, i), r.ones(e))
            w.add_tensor(_name(T.FFN_NORM, i), r.ones(e))
            _dense_ffn(w, r, i, e, s.n_ff)
            w.add_tensor(_name(T.FFN_POST_NORM, i), r.ones(e))
        w.add_tensor(_name(T.OUTPUT_NORM), r.ones(e))

    return _write_atomic(path, "gemma2", fill)


# --- cohere2 (sliding window, three local layers to one global) ------------------------------


@dataclass(frozen=True)
class Cohere2Spec:
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 768
    sliding_window: int = 2048
    n_ctx_train: int = 8192
    dtype: str = "f16"
    seed: int = 23
    name: str = "tiny-cohere2"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head  # cohere2 takes Q as wide as the embedding


def write_cohere2(path: Path, spec: Cohere2Spec = Cohere2Spec()) -> Path:
    s = spec
    r = _Weights(s.seed, s.dtype)

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(s.name)
        w.add_file_type(_file_type(s.dtype))
        w.add_block_count(s.n_layer)
        w.add_context_length(s.n_ctx_train)
        w.add_embedding_length(s.n_embd)
        w.add_feed_forward_length(s.n_ff)
        w.add_head_count(s.n_head)
        w.add_head_count_kv(s.n_head_kv)
        w.add_rope_dimension_count(s.head_dim)
        w.add_rope_freq_base(50000.0)
        w.add_layer_norm_eps(1e-5)
        w.add_logit_scale(0.25)
        w.add_sliding_window(s.sliding_window)
        n_vocab = _spm_vocab(w)

        e = s.n_embd
        w.add_tensor(_name(T.TOKEN_EMBD), r.mat(n_vocab, e))  # also the output matrix
        for i in range(s.n_layer):
            w.add_tensor(_name(T.ATTN_NORM, i), r.ones(e))
            _attention(w, r, i, e, s.n_head, s.n_head_kv, s.head_dim)
            _dense_ffn(w, r, i, e, s.n_ff)
        w.add_tensor(_name(T.OUTPUT_NORM), r.ones(e))

    return _write_atomic(path, "cohere2", fill)


# Scout's layout: every layer MoE (the GGUF still carries a dense feed_forward_length).
LLAMA4_ALL_MOE = Llama4Spec(moe_layer_step=1, seed=24, name="tiny-llama4-all-moe")


def write_llama4_all_moe(path: Path) -> Path:
    return write_llama4(path, LLAMA4_ALL_MOE)


WRITERS: dict[str, Callable[[Path], Path]] = {
    "llama4": write_llama4,
    "llama4-all-moe": write_llama4_all_moe,
    "gemma2": write_gemma2,
    "cohere2": write_cohere2,
}


def write_all(models_dir: Path) -> dict[str, Path]:
    """`tiny-<family>.gguf` for each family here, in `models_dir`."""
    return {fam: writer(Path(models_dir) / f"tiny-{fam}.gguf") for fam, writer in WRITERS.items()}
