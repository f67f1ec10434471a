"""Memory estimates for running a model in llama-server, and the log lines that measure them.

Pure functions. `estimate` predicts weights + KV cache + compute buffer (+ a fixed per-device
overhead); `parse_buffer_lines` reads what llama-server actually allocated from its log
(upstream prints these lines only at `-lv 4`; ik_llama.cpp prints them by default).

The compute-buffer formula was fitted against upstream llama-server build 11434 (CPU) on
dense llama-architecture models; see `_compute_bytes`. Sliding-window attention is modelled
(`swa_cells`, measured exact on Gemma 3, and on tiny gemma2, cohere2 and llama4, whose
chunked attention is sized alike), and so are routed MoE models' compute terms
(`moe_activation_floats`; ik_llama.cpp: `ik_activation_floats`, measured on tiny qwen3,
qwen3moe and gpt-oss). MLA (`kv_layer_bytes`: one latent row, K only), recurrent state
(`recurrent_state_bytes`: f32 per sequence) and encoders (no cache) are modelled per layer,
measured on generated deepseek2 / granitehybrid / bert models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from guardian_supervisor.memory.gguf_info import DELTA_NET_HYBRIDS, ModelInfo

MIB = 1024 * 1024
# CUDA context, cuBLAS workspace and the backend's memory pool: memory a GPU loses that no
# buffer line reports. Ollama reserves 457 MiB per CUDA device (ml/device.go); round up.
DEFAULT_GPU_OVERHEAD = 512 * MIB
KV_CTX_PAD = 256  # llama.cpp pads the KV cache size to a multiple of 256 cells

# (block size, bytes per block) of each KV cache type; ik's q6_0 included.
KV_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q8_KV": (32, 32),  # ik: int8 values, plus KV_ROW_META bytes of scale per row
    "q6_0": (32, 26),
    "q5_1": (32, 24),
    "q5_0": (32, 22),
    "q4_1": (32, 20),
    "q4_0": (32, 18),
    "iq4_nl": (32, 18),
}


# Types that store a per-row header (ik's ggml.c `row_meta_size`) beside their blocks.
KV_ROW_META: dict[str, int] = {"q8_KV": 8}
_KV_BY_LOWER = {k.lower(): k for k in KV_TYPES}


def kv_row_bytes(kv_type: str, n_elements: int) -> int:
    """Bytes for one row of `n_elements` values of a KV cache type (whole blocks, + row header)."""
    name = _KV_BY_LOWER.get(kv_type.lower())
    if name is None:
        raise ValueError(f"unknown KV cache type {kv_type!r}; known: {', '.join(KV_TYPES)}")
    block, size = KV_TYPES[name]
    return -(-n_elements // block) * size + KV_ROW_META.get(name, 0)


def _mib(n: int) -> float:
    return round(n / MIB, 2)


@dataclass(frozen=True)
class Estimate:
    """Predicted bytes for one llama-server instance. `total_bytes` includes the overhead."""

    ctx: int  # KV cells, after padding
    weights_bytes: int
    layer_weight_bytes: list[int]
    nonrepeating_bytes: int
    kv_bytes: int
    kv_per_layer: list[int]
    compute_bytes: int
    output_bytes: int
    overhead_bytes: int
    total_bytes: int
    host_cache_bytes: int = 0  # ik's host prompt cache (--cache-ram), in total_bytes on CPU runs
    rs_bytes: int = 0  # recurrent state (Mamba/RWKV layers), already counted in kv_bytes
    projector_bytes: int = 0  # --mmproj weights, in nonrepeating_bytes (planner.with_projector)
    projector_compute_bytes: int = 0  # its warm-up compute buffer, in nonrepeating_bytes too
    projector_in_ram: bool = False  # --no-mmproj-offload: both stay in RAM, outside the total

    @property
    def per_layer_bytes(self) -> list[int]:
        """Weights + KV per layer: what moving one layer to another device moves."""
        return [w + k for w, k in zip(self.layer_weight_bytes, self.kv_per_layer, strict=False)]

    def to_dict(self) -> dict[str, Any]:
        """Figures in MiB (two decimals) for printing and JSON."""
        return {
            "ctx": self.ctx,
            "weights_mib": _mib(self.weights_bytes),
            "nonrepeating_mib": _mib(self.nonrepeating_bytes),
            "layer_weight_mib": [_mib(b) for b in self.layer_weight_bytes],
            "kv_mib": _mib(self.kv_bytes),
            "kv_per_layer_mib": [_mib(b) for b in self.kv_per_layer],
            "compute_mib": _mib(self.compute_bytes),
            "output_mib": _mib(self.output_bytes),
            "overhead_mib": _mib(self.overhead_bytes),
            "host_cache_mib": _mib(self.host_cache_bytes),
            "rs_mib": _mib(self.rs_bytes),
            "projector_mib": _mib(self.projector_bytes),
            "projector_compute_mib": _mib(self.projector_compute_bytes),
            "projector_in_ram": self.projector_in_ram,
            "total_mib": _mib(self.total_bytes),
        }


def estimate(
    info: ModelInfo,
    *,
    ctx: int,
    kv_type: str = "f16",
    kv_type_v: str | None = None,
    n_parallel: int = 1,
    n_batch: int = 2048,
    n_ubatch: int = 512,
    gpu: bool = True,
    flash_attn: bool = True,
    kv_unified: bool = False,
    flavor: str = "upstream",
    overhead_bytes: int | None = None,
    host_cache_bytes: int = 0,
    swa_full: bool = False,
) -> Estimate:
    """Predict the memory llama-server needs for `info` at `-c ctx` (total over `-np` slots).

    gpu=True answers "how much VRAM with every layer offloaded": token_embd stays in host
    memory in both forks (unless it doubles as the output matrix), and the fixed
    per-device overhead (default DEFAULT_GPU_OVERHEAD) is added. gpu=False answers for a
    CPU-only run: every tensor counts and the overhead defaults to 0. `host_cache_bytes`
    (ik's --cache-ram) is host memory: it counts in the total of a CPU-only run only.
    A quantized V cache (`kv_type_v`, default = kv_type) needs flash attention.
    Sliding-window layers (upstream only, unless `swa_full`) hold `swa_cells` cells: see there.
    """
    if ctx < 1 or n_parallel < 1 or n_ubatch < 1 or n_batch < 1:
        raise ValueError("ctx, n_parallel, n_batch and n_ubatch must be positive")
    if flavor not in ("upstream", "ik"):
        raise ValueError(f"flavor must be 'upstream' or 'ik', not {flavor!r}")
    v_type = kv_type_v or kv_type
    cells = kv_cells(ctx, n_parallel, kv_unified, flavor)
    swa = swa_cells(info, cells, n_parallel, n_ubatch, kv_unified, flavor, swa_full)
    is_swa = list(info.swa_layers) + [False] * info.n_layer
    rs_per_layer = recurrent_state_bytes(info, n_parallel)
    kv_per_layer = [
        kv_layer_bytes(info, il, swa if is_swa[il] else cells, kv_type, v_type, flavor, flash_attn)
        + rs_per_layer[il]
        for il in range(min(info.n_layer, len(info.n_head_kv)))
    ]
    nonrepeating = info.nonrepeating_bytes
    if gpu and info.tensor_bytes("output.weight"):
        nonrepeating -= info.tensor_bytes("token_embd.weight")  # input embeddings stay on host
    weights = sum(info.layer_bytes) + nonrepeating
    compute = _compute_bytes(
        info, cells, n_parallel, n_batch, n_ubatch, flash_attn, kv_unified, flavor, kv_type
    )
    if flash_attn and flavor == "upstream" and any(info.swa_layers):
        # the SWA cache has its own f16 mask, ubatch x cells of one stream (also where it
        # holds the whole context: -c below the window, --swa-full; measured on llama4)
        streams = 1 if kv_unified else n_parallel
        compute += min(n_ubatch, n_batch, cells) * (swa // streams) * 2
    output = n_parallel * info.n_vocab * 4  # logits buffer: one f32 row per sequence
    overhead = overhead_bytes if overhead_bytes is not None else (DEFAULT_GPU_OVERHEAD if gpu else 0)
    kv = sum(kv_per_layer)
    host_cache = 0 if gpu else host_cache_bytes
    return Estimate(
        ctx=cells,
        weights_bytes=weights,
        layer_weight_bytes=list(info.layer_bytes),
        nonrepeating_bytes=nonrepeating,
        kv_bytes=kv,
        kv_per_layer=kv_per_layer,
        compute_bytes=compute,
        output_bytes=output,
        overhead_bytes=overhead,
        total_bytes=weights + kv + compute + output + overhead + host_cache,
        host_cache_bytes=host_cache,
        rs_bytes=sum(rs_per_layer),
    )


def kv_layer_bytes(
    info: ModelInfo, il: int, cells: int, kv_type: str, v_type: str, flavor: str, flash_attn: bool
) -> int:
    """KV cache bytes of layer `il` holding `cells` cells (all streams).

    - encoders (bert, ...) on upstream, and recurrent layers: none (llama.cpp makes no KV
      for them; a recurrent layer's state is `recurrent_state_bytes`). ik_llama.cpp gives an
      encoder an ordinary full-size K + V cache (measured).
    - MLA (deepseek2): the cache is K only, one row of kv_lora_rank + rope dims per cell
      (the GGUF's key_length with one KV head); V is a view of it (llama-kv-cache.cpp
      `has_v = !is_mla`). ik stores the same row, in the V type when flash attention is off
      (its default -mla 3).
    - otherwise K + V rows of n_head_kv x head size.
    """
    if (not info.has_kv_cache and flavor == "upstream") or _is_recurrent(info, il):
        return 0
    h = info.n_head_kv[il] if il < len(info.n_head_kv) else 0
    if info.is_mla:
        width = info.kv_lora_rank + info.rope_dim if info.kv_lora_rank else h * info.key_length
        row_type = v_type if flavor == "ik" and not flash_attn else kv_type
        return cells * kv_row_bytes(row_type, width)
    return cells * (kv_row_bytes(kv_type, h * info.key_length) + kv_row_bytes(v_type, h * info.value_length))


def recurrent_state_bytes(info: ModelInfo, n_parallel: int) -> list[int]:
    """Per layer: the f32 recurrent state of a recurrent layer, for every sequence.

    llama_memory_recurrent keeps, per layer and per sequence (max(1, -np) cells), a conv
    row r of (d_conv - 1) x (d_inner + 2 x n_group x d_state) and an SSM row s of
    d_state x d_inner, both f32 whatever -ctk/-ctv say (llama_hparams::n_embd_r/n_embd_s).
    The same rows hold Mamba 1 (n_group 0) and the gated delta-net of qwen3next (d_inner =
    value heads x d_state: s is one d_state^2 matrix per value head). RWKV: r is
    token_shift_count x E, s is E x wkv head size. ik_llama.cpp sizes the same rows
    (in its KV buffer; qwen3next's in one row per sequence).
    """
    n = info.n_layer
    if not any(info.recurrent_layers):
        return [0] * n
    conv = max(info.ssm_d_conv - 1, 0) * (info.ssm_d_inner + 2 * info.ssm_n_group * info.ssm_d_state)
    state = info.ssm_d_state * info.ssm_d_inner
    if info.wkv_head_size:  # RWKV: token-shift rows, and a head_size^2 wkv state per head
        conv, state = info.token_shift_count * info.n_embd, info.n_embd * info.wkv_head_size
    per_layer = (conv + state) * 4 * max(1, n_parallel)
    recr = list(info.recurrent_layers) + [False] * n
    return [per_layer if recr[il] else 0 for il in range(n)]


def kv_cells(ctx: int, n_parallel: int, kv_unified: bool, flavor: str) -> int:
    """KV cells of all streams together: -c padded to 256; upstream with split streams
    (-np > 1, no -kvu) pads each sequence's share to 256 again (llama-context.cpp n_ctx_seq:
    -c 4096 -np 3 holds 3 x 1536 cells, measured)."""
    cells = -(-ctx // KV_CTX_PAD) * KV_CTX_PAD
    if flavor != "upstream" or kv_unified or n_parallel <= 1:
        return cells
    per_seq = -(-(cells // n_parallel) // KV_CTX_PAD) * KV_CTX_PAD
    return per_seq * n_parallel


def swa_cells(
    info: ModelInfo, cells: int, n_parallel: int, n_ubatch: int, kv_unified: bool, flavor: str, swa_full: bool
) -> int:
    """KV cells (all streams together) of the sliding-window layers' cache.

    Upstream's llama_kv_cache_iswa gives each stream min(its share of the context,
    pad256(window x sequences-in-the-stream + ubatch)): the window of every sequence plus
    one ubatch being written (measured on Gemma 3 270M: 1024 cells at -c 4096..8192 -np 1,
    1536 unified with -np 2, 2 x 1024 split with -np 2; llama4's chunked layers alike, the
    8192-token chunk as window: 8704 cells at -c 16384). `--swa-full`, models without SWA,
    and ik_llama.cpp (whose Gemma 3 cache is full-size on every layer, measured) get `cells`.
    """
    if not info.sliding_window or not any(info.swa_layers) or swa_full or flavor == "ik":
        return cells
    streams = 1 if kv_unified else n_parallel
    per_stream = cells // streams
    want = info.sliding_window * (n_parallel if kv_unified else 1) + n_ubatch
    return streams * min(per_stream, -(-want // KV_CTX_PAD) * KV_CTX_PAD)


def _compute_bytes(
    info: ModelInfo,
    cells: int,
    n_parallel: int,
    n_batch: int,
    n_ubatch: int,
    flash_attn: bool,
    kv_unified: bool,
    flavor: str,
    kv_type: str = "f16",
) -> int:
    """Peak of llama.cpp's graph allocator for one worst-case ubatch.

    Fitted on upstream build 11434 (CPU, dense llama, ~80 shapes: 1..32 layers, ubatch
    128..2048, ctx 512..32768, FA on and off), in f32 values per ubatch token, with ffn F,
    embedding E, KV width Ekv:
      F > 2E, or F > E with 3+ layers:  3F + 5E + 10   (exact to 0.1 %: real dense models)
      F <= 2E with 2 layers:            2F + 5E + 10   (freed attention blocks get reused)
      F <= E:                           7E + 10        (within ~15 %)
      1 layer:                          5E + max(2Ekv, E) + 10 (llama.cpp drops all but
                                        the output token before the last layer's FFN)
    plus the attention mask, ubatch x KV cells of one sequence in f16. Without flash
    attention the KQ scores (f32 per head) and an f32 mask dominate instead. MoE models:
    `moe_activation_floats`; ik_llama.cpp: `ik_activation_floats`, and its graph reserves
    logits for every ubatch token, ubatch x (E + vocab) f32, as Ollama's GraphSize assumes
    (which is what Gemma 3's 262144-token vocabulary measures on ik).
    """
    ub = min(n_ubatch, n_batch, cells)
    if not info.has_kv_cache:
        return (
            _encoder_compute_bytes(info, ub, flash_attn)
            if flavor == "upstream"
            else _ik_encoder_compute_bytes(info, ub)
        )
    if flavor == "ik" and info.is_mla and flash_attn and ub >= IK_MLA_PP_MIN_TOKENS:
        return _ik_mla_compute_bytes(info, cells, ub, kv_type)
    e, f = info.n_embd, info.n_ff
    e_kv = max(info.n_head_kv, default=0) * info.key_length
    if flavor == "ik" and info.n_layer > 1:
        per_token = ik_activation_floats(info)
    elif info.is_moe and info.n_layer > 1:
        per_token = moe_activation_floats(info)
    elif info.n_layer <= 1:
        per_token = 5 * e + max(2 * e_kv, e)
    elif f <= e:
        per_token = 7 * e
    elif f <= 2 * e and info.n_layer == 2:
        per_token = 2 * f + 5 * e
    else:
        per_token = 3 * f + 5 * e
    per_token = _recurrent_floats(info, max(per_token, _mla_attention_floats(info)), flavor)
    per_token += _parallel_block_floats(info, flavor, kv_type)
    activations = ub * 4 * (per_token + 10)
    # the worst-case graph carries the sequences' state through a recurrent layer (one layer's worth)
    state = max(recurrent_state_bytes(info, 1), default=0)
    activations += _graph_state_seqs(info, n_parallel, flavor) * state
    kv_seq = cells if kv_unified or flavor == "ik" else -(-cells // n_parallel)  # ik: one stream
    if not any(h for il, h in enumerate(info.n_head_kv) if not _is_recurrent(info, il)):
        total = activations  # no attention layer: no mask, no KQ
    elif flash_attn:
        # ik builds its SWA mask as large as the (full-size) cache, beside the causal one
        masks = 2 if flavor == "ik" and any(info.swa_layers) else 1
        total = activations + masks * ub * kv_seq * 2
    else:
        # KQ scores (f32 per head) and an f32 mask, beside 8E (upstream) or 2E (ik, measured
        # on 4 tiny llama shapes, ctx 2048..8192, ubatch 256..1024: within 0.02 MiB) per token
        rows = 2 if flavor == "ik" else 8
        total = max(activations, ub * kv_seq * (4 * info.n_head + 4) + ub * 4 * rows * e)
    if flavor == "ik":
        total = max(total, ub * 4 * (e + info.n_vocab))
    return total


def moe_activation_floats(info: ModelInfo) -> int:
    """f32 values per ubatch token at the peak of a routed-MoE model's graph (upstream 11434).

    With E the embedding, K experts used per token and F one expert's FFN width, the
    experts' up, gate and activation outputs are F x K each (where a dense FFN has F), and
    the down projection writes E x K before the K results are summed:
      E <= 2F (gpt-oss, Mixtral):           3FK + 5E        (the E x K output reuses freed blocks)
      E > 2F (Qwen3-30B-A3B: E = 2.7F):     3FK + 5E + EK   (it is placed above them)
    and never below the attention's own peak (`_attention_floor`). Fitted on 52 tiny
    qwen3moe and gpt-oss shapes (E 128..512, K 1..16, F 32..256): exact to 0.5 % on 40,
    including every shape with FK >= 2E (all real MoE models); over by up to a third on
    shapes with few or narrow experts (FK <= E), never under.
    """
    if info.architecture == "llama4":
        return llama4_activation_floats(info)
    e, k, f = info.n_embd, info.n_expert_used, info.n_ff_exp
    ffn = 3 * f * k + 5 * e + (e * k if e > 2 * f and k > 1 else 0)
    return max(ffn, _attention_floor(info))


def llama4_activation_floats(info: ModelInfo) -> int:
    """Upstream's peak per ubatch token for llama4: a MoE layer (routed experts plus a shared
    expert as wide as one) peaks at 3FK + 5E, + EK where the experts are wider than E; with
    `interleave_moe_layer_step` > 1 the dense layers between (3F + 5E of their own FFN) may
    peak higher. Measured on 11 tiny llama4 shapes (E 256, F 128..1024, K 1..2, step 1 and
    2): within 0.5 % where F >= E, over by up to 5 % on narrower experts.
    """
    e, k, f = info.n_embd, info.n_expert_used, info.n_ff_exp
    moe = 3 * f * k + 5 * e + (e * k if f > e else 0)
    dense = 3 * info.n_ff + 5 * e if info.moe_layer_step > 1 else 0
    return max(moe, dense, _attention_floor(info))


def _parallel_block_floats(info: ModelInfo, flavor: str, kv_type: str) -> int:
    """cohere2 runs attention and FFN side by side on one normed input, which stays alive
    beside the FFN's peak: E more f32 per token on ik, and on upstream with a quantized K
    cache (exact on 4 tiny cohere2 shapes, E 256/512, F 768..2048, f16/q8_0/q4_0)."""
    if info.architecture != "cohere2":
        return 0
    if flavor == "ik" or kv_type.lower() not in ("f32", "f16", "bf16"):
        return info.n_embd
    return 0


def ik_llama4_activation_floats(info: ModelInfo) -> int:
    """ik_llama.cpp's peak per ubatch token for llama4, with A = max(2Q, 2E): a MoE layer
    peaks at the routed experts, K(E + F) + A, or at the shared expert (as wide as one),
    3F + A, whichever is larger; dense layers between (`interleave_moe_layer_step` > 1) at
    3F_dense + A; never below 4Q. Measured on 11 tiny llama4 shapes (E 256, F 128..1024,
    K 1..2): within 0.5 % on 8, over by a quarter where F <= E, 7 % under at F = 4E.
    """
    e, q, k, f = info.n_embd, info.n_head * info.key_length, info.n_expert_used, info.n_ff_exp
    attn = max(2 * q, 2 * e)
    peak = max(k * (e + f), 3 * f) + attn
    if info.moe_layer_step > 1:
        peak = max(peak, 3 * info.n_ff + attn)
    return max(peak, 4 * q)


def ik_activation_floats(info: ModelInfo) -> int:
    """ik_llama.cpp's peak in f32 values per ubatch token (0.1.5, CPU, flash attention).

    ik fuses the FFN's gate, up and activation, so a dense layer peaks at 3F + max(2Q, 2E)
    and a MoE layer at K(E + F) + max(2Q, 3E), Q = n_head x head_dim; never below 4Q.
    Measured on tiny llama, qwen3, qwen3moe and gpt-oss shapes: exact (0.5 %) on 14 of 20,
    up to a quarter over where the FFN is narrow (F <= 2E), 8 % under on one qwen3 shape
    with Q = E / 2 (real models have Q >= E).
    """
    if info.architecture == "llama4":
        return ik_llama4_activation_floats(info)
    e, q = info.n_embd, info.n_head * info.key_length
    if info.is_moe:
        peak = info.n_expert_used * (e + info.n_ff_exp) + max(2 * q, 3 * e)
    else:
        peak = 3 * info.n_ff + max(2 * q, 2 * e)
    return max(peak, 4 * q)


def _attention_floor(info: ModelInfo) -> int:
    """The attention block's peak in f32 values per token, with Q = n_head x head_dim:
    3E + 3Q where Q and K are RMS-normed per head (qwen3moe: one more Q-sized copy),
    5E + 2Q otherwise (gpt-oss: biases added in place). Measured on the tiny models."""
    e, q = info.n_embd, info.n_head * info.key_length
    if info.architecture in ("qwen3", "qwen3moe"):
        return 3 * e + 3 * q
    return 5 * e + 2 * q


def _is_recurrent(info: ModelInfo, il: int) -> bool:
    return il < len(info.recurrent_layers) and info.recurrent_layers[il]


def _mla_attention_floats(info: ModelInfo) -> int:
    """f32 values per ubatch token at the peak of an MLA attention block (0 without MLA).

    The queries are absorbed into the latent space, so each head carries kv_lora_rank +
    rope values twice (absorbed Q and the attention output) besides its nope part. Fitted
    on upstream build 11434, CPU, flash attention, generated deepseek2 models (n_head 4..16,
    kv_lora_rank 256/512, rope 64, nope 64/128): n_head x (2(L + R) + nope + 2R) + 3E,
    within 2.5 %.
    """
    if not info.is_mla or not info.kv_lora_rank:
        return 0
    rope = info.rope_dim
    nope = max(info.key_length_mla - rope, 0)
    return info.n_head * (2 * (info.kv_lora_rank + rope) + nope + 2 * rope) + 3 * info.n_embd


def _mamba_floats(info: ModelInfo) -> int:
    """f32 values per ubatch token at the peak of a Mamba2 layer (0 without recurrent layers).

    Fitted on upstream build 11434, CPU, generated granitehybrid models (d_inner 256..1024,
    2 x n_group x d_state 128..512, ubatch 256..1024): 7.4 d_inner + 2.7 BC + 233, within
    5 %; when the FFN is the larger, the Mamba buffers still live beside it:
    3F + 5E + 3.5 d_inner (within 2 % for F >= 8E, +13 % at F = 16E with E = 128).
    """
    if not any(info.recurrent_layers) or not info.ssm_d_inner:
        return 0
    d_inner, bc = info.ssm_d_inner, 2 * info.ssm_n_group * info.ssm_d_state
    mixer = (74 * d_inner + 27 * bc) // 10 + 233
    ffn = 3 * info.n_ff + 5 * info.n_embd + (7 * d_inner) // 2
    return max(mixer, ffn)


def _recurrent_floats(info: ModelInfo, per_token: int, flavor: str = "upstream") -> int:
    """f32 values per ubatch token at the graph's peak, given the attention / FFN estimate
    `per_token`, for models with recurrent layers (upstream build 11434, CPU; each fitted
    on generated models, E = n_embd, F = n_ff, slopes over ubatch 512..1024):
    - RWKV6: the time mix, 15E + 5 x time_mix_extra_dim + time_decay_extra_dim, or the
      channel mix, F + 8E, when wider (E 128..1024, F 2E..16E: within 3 % on real shapes,
      +8 % at E = 128).
    - RWKV7: 20E (19E with only two layers), or F + 16E once F > 8E (E 128..1024, F 2E..12E,
      2..6 layers: within 1 %).
    - Mamba 1: 7.5 d_inner (exact, E 128..1024; no FFN).
    - gated delta-net (qwen3next): 1.5 conv channels (2 x key heads x d_state + d_inner)
      + 2.5 d_inner + 5E beside the MoE's own peak, whichever is larger (fused GDN op;
      exact on 12 shapes). ik_llama.cpp (0.1.5, its own delta-net): the largest of
      2 conv + d_inner + 3E, the MoE's K(E + F) + 3E and the gated attention's 3Q + 7E
      (Q = n_head x head_dim; within 0.5 % on the same 12 shapes).
    - Mamba 2 and its hybrids: `_mamba_floats`.
    A dense-FFN estimate means nothing for a pure RWKV or Mamba model: theirs replaces it.
    """
    if not any(info.recurrent_layers):
        return per_token
    e, f = info.n_embd, info.n_ff
    if info.wkv_head_size and info.architecture.startswith("rwkv7"):
        return f + 16 * e if f > 8 * e else (20 if info.n_layer > 2 else 19) * e
    if info.wkv_head_size:
        extra = 5 * int(info.metadata.get(f"{info.architecture}.time_mix_extra_dim") or 0)
        extra += int(info.metadata.get(f"{info.architecture}.time_decay_extra_dim") or 0)
        return max(15 * e + extra, f + 8 * e)
    if info.architecture == "mamba":
        return (15 * info.ssm_d_inner) // 2
    if info.architecture in DELTA_NET_HYBRIDS:
        conv = info.ssm_d_inner + 2 * info.ssm_n_group * info.ssm_d_state
        if flavor == "ik":
            moe = info.n_expert_used * (e + info.n_ff_exp) + 3 * e if info.is_moe else 0
            attn = 3 * info.n_head * info.key_length + 7 * e
            return max(2 * conv + info.ssm_d_inner + 3 * e, moe, attn)
        return max(per_token, (3 * conv + 5 * info.ssm_d_inner) // 2 + 5 * e)
    return max(per_token, _mamba_floats(info))


def _graph_state_seqs(info: ModelInfo, n_parallel: int, flavor: str = "upstream") -> int:
    """How many sequences' state (one layer's worth) the worst-case graph holds beside the
    activations: upstream, every sequence's for Mamba 1, RWKV and the gated delta-net
    (measured: -np 1..8), all but one for Mamba 2 and its hybrids (whose fit absorbed the
    first; jamba unmeasured, kept there); ik_llama.cpp reserves its graph for one sequence
    (qwen3next, -np 1 and 3)."""
    if flavor == "ik":
        return 1
    every = info.architecture in ("mamba", *DELTA_NET_HYBRIDS) or info.wkv_head_size > 0
    return n_parallel if every else max(0, n_parallel - 1)


# ik_llama.cpp's MLA graph takes its prompt-processing path (`pp_opt`) from 128 tokens on.
IK_MLA_PP_MIN_TOKENS = 128


def _ik_mla_compute_bytes(info: ModelInfo, cells: int, ub: int, kv_type: str) -> int:
    """ik_llama.cpp, MLA with flash attention (-mla 3), a prompt-sized ubatch: each layer
    decompresses the whole latent cache through wkv_b into f32 K-nope and V for every head,
    then builds a per-head K in the cache type (llama-build-context.cpp `pp_opt`), so the
    compute buffer grows with the context: per cell n_head x (nope + v) f32 + a row of
    n_head x (rope + nope) in the KV type, plus the f16 mask and ~4E f32 per token
    (measured on the generated deepseek2: 2048..16384 cells, f16/q8_0, within 4 %).
    ik keeps one stream for all sequences, so `cells` is the whole cache. No -amb split is
    modelled (its default, 0, never splits)."""
    rope = info.rope_dim
    nope = max(info.key_length_mla - rope, 0)
    per_cell = info.n_head * (nope + info.value_length_mla) * 4 + kv_row_bytes(
        kv_type, info.n_head * (rope + nope)
    )
    return cells * per_cell + ub * cells * 2 + ub * 4 * 4 * info.n_embd


def _ik_encoder_compute_bytes(info: ModelInfo, ub: int) -> int:
    """ik_llama.cpp, non-causal encoder: the ubatch attends to itself without flash
    attention, f32 KQ per head plus masks, ub^2 x (4 n_head + 10) bytes, and 4E f32 per
    token (measured on generated bert models: n_head 2..8, E 128/256, ubatch 256..4096,
    within 6 %; independent of the context)."""
    return ub * ub * (4 * info.n_head + 10) + ub * 4 * 4 * info.n_embd


def _encoder_compute_bytes(info: ModelInfo, ub: int, flash_attn: bool) -> int:
    """Compute buffer of a non-causal encoder (bert...): no KV cache, attention over the
    ubatch itself. Fitted on upstream build 11434, CPU, generated bert models (E 128/256,
    F 256..1024, ubatch 256..1024, 1..4 layers): per token max(F + 5E, 6.5E) + 5 f32
    values, plus the ubatch x ubatch f16 mask (with flash attention; f32 KQ per head
    without)."""
    e, f = info.n_embd, info.n_ff
    per_token = max(f + 5 * e, (13 * e) // 2) + 5
    if flash_attn:
        return ub * 4 * per_token + ub * ub * 2
    return max(ub * 4 * per_token, ub * ub * (4 * info.n_head + 4) + ub * 4 * 8 * e)


# --- measuring: llama-server's own log lines --------------------------------------------------


@dataclass(frozen=True)
class DeviceBytes:
    model: int = 0
    kv: int = 0
    compute: int = 0
    output: int = 0

    @property
    def total(self) -> int:
        return self.model + self.kv + self.compute + self.output


@dataclass(frozen=True)
class Measured:
    """What llama-server reported allocating. `per_device` is keyed by buffer name as logged
    (CUDA0, CPU_Mapped, CUDA_Host, ...); `is_host_buffer` tells host buffers from VRAM."""

    model_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    output_bytes: int = 0
    per_device: dict[str, DeviceBytes] = field(default_factory=dict)
    offloaded_layers: int | None = None
    total_layers: int | None = None
    source: str = "none"  # "buffers" (per-buffer lines), "breakdown" (the MiB table) or "none"
    rs_bytes: int = 0  # recurrent-state buffers ("RS buffer size"), already counted in kv_bytes

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.kv_bytes + self.compute_bytes + self.output_bytes

    def device_totals(self, include_host: bool = False) -> dict[str, int]:
        return {
            name: d.total for name, d in self.per_device.items() if include_host or not is_host_buffer(name)
        }


def is_host_buffer(name: str) -> bool:
    """CPU, CPU_Mapped, CPU_REPACK, CUDA_Host, AMX, Host: system RAM, not device memory."""
    return name.startswith("CPU") or name.endswith("_Host") or name in ("Host", "AMX")


# upstream: "load_tensors:   CPU_Mapped model buffer size =     1.52 MiB"
#           "llama_kv_cache:        CPU KV buffer size =     4.00 MiB"
#           "sched_reserve:        CPU compute buffer size =     6.27 MiB"
#           "llama_context:        CPU  output buffer size =     0.00 MiB"
#           "llama_memory_recurrent:        CPU RS buffer size =     0.78 MiB" (Mamba/RWKV state)
# ik:       "llm_load_tensors:      CUDA0 buffer size =  3745.00 MiB" (no "model")
#           "llama_kv_cache_init:      CUDA0 KV buffer size =   256.00 MiB"
#           "llama_new_context_with_model:      CUDA0 compute buffer size =   258.50 MiB"
_BUFFER_RE = re.compile(
    r"(?P<dev>\S+)\s+(?:(?P<kind>model|KV|RS|compute|output)\s+)?buffer size\s*=\s*(?P<mib>\d+(?:\.\d+)?)\s*MiB"
)
_OFFLOAD_RE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# "| memory breakdown [MiB] | total free self model context compute unaccounted |" rows:
# "|   - CUDA0 (RTX 5090)   | 32606 = 1057 + (29365 = 28609 + 397 + 358) + 2183 |"
# "|   - Host               |                 30956 = 30940 +   0 +  16        |"
_BREAKDOWN_GPU_RE = re.compile(
    r"\|\s*-\s*(?P<dev>\S+)[^|]*\|\s*\d+\s*=\s*\d+\s*\+\s*\(\s*\d+\s*=\s*(?P<m>\d+)\s*\+\s*(?P<c>\d+)\s*\+\s*(?P<k>\d+)\s*\)"
)
_BREAKDOWN_OTHER_RE = re.compile(
    r"\|\s*-\s*(?P<dev>\S+)[^|]*\|\s*\d+\s*=\s*(?P<m>\d+)\s*\+\s*(?P<c>\d+)\s*\+\s*(?P<k>\d+)\s*\|"
)
# The recurrent state counts as KV: both are the context's memory (llama-fit-params' "context").
_KIND_FIELD = {
    None: "model",
    "model": "model",
    "KV": "kv",
    "RS": "kv",
    "compute": "compute",
    "output": "output",
}


def parse_buffer_lines(lines: Iterable[str]) -> Measured:
    """Sum the buffer sizes llama-server logged (either fork), per kind and per device.

    Every buffer line counts, so a draft model's buffers add to the main model's: feed one
    process's log. When no per-buffer lines are present, the last `memory breakdown [MiB]`
    table is used instead (its "context" column counts as KV, as do recurrent-state "RS"
    buffers, also summed in `rs_bytes`); the first table upstream
    prints with `-fit on` is only a projection and the one printed at exit replaces it.
    """
    per_dev: dict[str, dict[str, int]] = {}
    table: dict[str, dict[str, int]] = {}
    offloaded: tuple[int, int] | None = None
    rs = 0
    for line in lines:
        if "_compute_meta:" in line:
            continue  # the projector's (clip's) compute buffer: projector.parse_projector_lines
        if m := _BUFFER_RE.search(line):
            d = per_dev.setdefault(m["dev"], {})
            kind = _KIND_FIELD[m["kind"]]
            d[kind] = d.get(kind, 0) + round(float(m["mib"]) * MIB)
            rs += round(float(m["mib"]) * MIB) if m["kind"] == "RS" else 0
        elif m := _OFFLOAD_RE.search(line):
            offloaded = (int(m[1]), int(m[2]))
        elif "memory breakdown" in line:
            table = {}  # a new table starts: the latest one wins
        elif m := (_BREAKDOWN_GPU_RE.search(line) or _BREAKDOWN_OTHER_RE.search(line)):
            table[m["dev"]] = {
                "model": int(m["m"]) * MIB,
                "kv": int(m["c"]) * MIB,
                "compute": int(m["k"]) * MIB,
            }
    source = "buffers" if per_dev else ("breakdown" if table else "none")
    devices = {name: DeviceBytes(**vals) for name, vals in (per_dev or table).items()}
    return Measured(
        model_bytes=sum(d.model for d in devices.values()),
        kv_bytes=sum(d.kv for d in devices.values()),
        compute_bytes=sum(d.compute for d in devices.values()),
        output_bytes=sum(d.output for d in devices.values()),
        per_device=devices,
        offloaded_layers=offloaded[0] if offloaded else None,
        total_layers=offloaded[1] if offloaded else None,
        source=source,
        rs_bytes=rs,
    )
