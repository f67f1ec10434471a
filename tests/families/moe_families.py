"""Tiny random-weight GGUFs of the qwen3, qwen3moe and gpt-oss families, for memory tests.

Each loads in llama-server in about a second on a CPU and serves gibberish. The tensors
and hparams each architecture requires are those of llama.cpp build 11434
(src/models/qwen3.cpp, qwen3moe.cpp, openai-moe.cpp); tensor names come from gguf-py's
constants, and the vocabulary and chat template are the demo llama's.

- qwen3: dense, with per-head RMS norms on Q and K (attn_q_norm, attn_k_norm), and a head
  dimension (attention.key_length) that need not be n_embd / n_head.
- qwen3moe: qwen3's attention, and a routed MoE FFN: ffn_gate_inp (the router) and the
  experts stacked in 3-d tensors ffn_{gate,up,down}_exps, sized by expert_count and
  expert_feed_forward_length; expert_used_count experts run per token.
- gpt-oss: MoE with biases on the router and the experts, attention sinks (one f32 per
  head), a post-attention norm, and sliding-window attention on every other layer (even
  layers: the window; odd layers: full, llama.cpp's set_swa_pattern(2)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from guardian_supervisor.demo_models import _vocab, add_demo_vocab, write_gguf_atomic

T = gguf.MODEL_TENSOR


@dataclass(frozen=True)
class FamilySpec:
    """Shape of a tiny model of one family. head_dim must be a multiple of 32 (q8_0 KV)."""

    arch: str  # "qwen3", "qwen3moe" or "gpt-oss"
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 384  # dense FFN (qwen3); MoE GGUFs carry one too, unused by the graph
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    sliding_window: int = 0
    n_ctx_train: int = 32768
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCH_ENUM:
            raise ValueError(f"unknown family {self.arch!r}; known: {', '.join(ARCH_ENUM)}")
        if self.head_dim % 32 or self.n_head % self.n_head_kv:
            raise ValueError("head_dim must be a multiple of 32 and n_head divide by n_head_kv")
        if self.is_moe and not (0 < self.n_expert_used <= self.n_expert and self.n_ff_exp > 0):
            raise ValueError("an MoE family needs 0 < n_expert_used <= n_expert and n_ff_exp > 0")

    @property
    def is_moe(self) -> bool:
        return self.arch in ("qwen3moe", "gpt-oss")

    @property
    def name(self) -> str:
        return f"tiny-{self.arch}"


ARCH_ENUM: dict[str, gguf.MODEL_ARCH] = {
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "qwen3moe": gguf.MODEL_ARCH.QWEN3MOE,
    "gpt-oss": gguf.MODEL_ARCH.GPT_OSS,
}

# The shapes of the real models, scaled down: Qwen3-0.6B (head_dim 128 > n_embd / n_head),
# Qwen3-30B-A3B (8 of 128 experts, E = 2.7 x expert FFN), gpt-oss-20b (4 of 32 experts,
# E = expert FFN, window 128).
FAMILIES: dict[str, FamilySpec] = {
    "qwen3": FamilySpec(
        "qwen3", n_layer=4, n_embd=128, n_head=4, n_head_kv=2, head_dim=64, n_ff=384, seed=11
    ),
    "qwen3moe": FamilySpec(
        "qwen3moe",
        n_layer=4,
        n_embd=256,
        n_head=4,
        n_head_kv=2,
        head_dim=64,
        n_ff=768,
        n_expert=32,
        n_expert_used=8,
        n_ff_exp=96,
        seed=12,
    ),
    "gpt-oss": FamilySpec(
        "gpt-oss",
        n_layer=4,
        n_embd=256,
        n_head=8,
        n_head_kv=2,
        head_dim=64,
        n_ff=256,
        n_expert=8,
        n_expert_used=4,
        n_ff_exp=256,
        sliding_window=128,
        seed=13,
    ),
}


def tensor_name(arch: str, tensor: gguf.MODEL_TENSOR, suffix: str = "weight", bid: int | None = None) -> str:
    """gguf-py's name for `tensor`, checked to belong to `arch` (MODEL_TENSORS)."""
    if tensor not in gguf.MODEL_TENSORS[ARCH_ENUM[arch]]:
        raise KeyError(f"{tensor.name} is not a tensor of {arch}")
    base = gguf.TENSOR_NAMES[tensor]
    return f"{base.format(bid=bid) if bid is not None else base}.{suffix}"


def write_family_model(path: Path, spec: FamilySpec) -> Path:
    """Write a random-weight model of `spec.arch` to `path` atomically (temp file + rename).

    Matrices are f16, norms, biases and sinks f32 (as converted models have them)."""
    n_vocab, arch, hd = len(_vocab()[0]), spec.arch, spec.head_dim
    rng = np.random.default_rng(spec.seed)

    def mat(*shape: int) -> np.ndarray:
        # numpy (.., rows, cols) is ggml ne=[cols, rows, ..]; small std keeps activations finite
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    def vec(*shape: int, value: float | None = None) -> np.ndarray:
        if value is not None:
            return np.full(shape, value, dtype=np.float32)
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(spec.name)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        w.add_block_count(spec.n_layer)
        w.add_context_length(spec.n_ctx_train)
        w.add_embedding_length(spec.n_embd)
        w.add_feed_forward_length(spec.n_ff)
        w.add_head_count(spec.n_head)
        w.add_head_count_kv(spec.n_head_kv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_dimension_count(hd)  # qwen3 asserts n_rot == head dim
        w.add_rope_freq_base(1_000_000.0)
        if spec.is_moe:
            w.add_expert_count(spec.n_expert)
            w.add_expert_used_count(spec.n_expert_used)
            w.add_expert_feed_forward_length(spec.n_ff_exp)
        if spec.sliding_window:
            w.add_sliding_window(spec.sliding_window)
        add_demo_vocab(w)

        def put(
            tensor: gguf.MODEL_TENSOR, data: np.ndarray, bid: int | None = None, suffix: str = "weight"
        ) -> None:
            w.add_tensor(tensor_name(arch, tensor, suffix, bid), data)

        e, q, kv = spec.n_embd, spec.n_head * hd, spec.n_head_kv * hd
        put(T.TOKEN_EMBD, mat(n_vocab, e))
        for i in range(spec.n_layer):
            put(T.ATTN_NORM, vec(e, value=1.0), i)
            put(T.ATTN_Q, mat(q, e), i)
            put(T.ATTN_K, mat(kv, e), i)
            put(T.ATTN_V, mat(kv, e), i)
            put(T.ATTN_OUT, mat(e, q), i)
            if arch in ("qwen3", "qwen3moe"):
                put(T.ATTN_Q_NORM, vec(hd, value=1.0), i)
                put(T.ATTN_K_NORM, vec(hd, value=1.0), i)
                put(T.FFN_NORM, vec(e, value=1.0), i)
            if arch == "qwen3":
                put(T.FFN_GATE, mat(spec.n_ff, e), i)
                put(T.FFN_UP, mat(spec.n_ff, e), i)
                put(T.FFN_DOWN, mat(e, spec.n_ff), i)
                continue
            n_x, f = spec.n_expert, spec.n_ff_exp
            put(T.FFN_GATE_INP, vec(n_x, e), i)  # the router stays f32, as converters keep it
            put(T.FFN_GATE_EXP, mat(n_x, f, e), i)
            put(T.FFN_UP_EXP, mat(n_x, f, e), i)
            put(T.FFN_DOWN_EXP, mat(n_x, e, f), i)
            if arch == "gpt-oss":
                put(T.ATTN_POST_NORM, vec(e, value=1.0), i)
                put(T.ATTN_SINKS, vec(spec.n_head), i)
                put(T.ATTN_Q, vec(q), i, "bias")
                put(T.ATTN_K, vec(kv), i, "bias")
                put(T.ATTN_V, vec(kv), i, "bias")
                put(T.ATTN_OUT, vec(e), i, "bias")
                put(T.FFN_GATE_INP, vec(n_x), i, "bias")
                put(T.FFN_GATE_EXP, vec(n_x, f), i, "bias")
                put(T.FFN_UP_EXP, vec(n_x, f), i, "bias")
                put(T.FFN_DOWN_EXP, vec(n_x, e), i, "bias")
        put(T.OUTPUT_NORM, vec(e, value=1.0))
        put(T.OUTPUT, mat(n_vocab, e))

    return write_gguf_atomic(path, arch, fill)


def write_families(directory: Path) -> dict[str, Path]:
    """Every family of FAMILIES as `<dir>/tiny-<arch>.gguf`."""
    return {a: write_family_model(Path(directory) / f"{s.name}.gguf", s) for a, s in FAMILIES.items()}
