"""Memory estimates for running a model in llama-server, and the log lines that measure them.

Pure functions. `estimate` predicts weights + KV cache + compute buffer (+ a fixed per-device
overhead); `parse_buffer_lines` reads what llama-server actually allocated from its log
(upstream prints these lines only at `-lv 4`; ik_llama.cpp prints them by default).

The compute-buffer formula was fitted against upstream llama-server build 11434 (CPU) on
dense llama-architecture models; see `_compute_bytes`. Sliding-window attention is modelled
(`swa_cells`, measured exact on Gemma 3), and so are routed MoE models' compute terms
(`moe_activation_floats`; ik_llama.cpp: `ik_activation_floats`, measured on tiny qwen3,
qwen3moe and gpt-oss). MLA and recurrent/hybrid models are not modelled specially yet:
their KV and compute figures are rough.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from guardian_supervisor.memory.gguf_info import ModelInfo

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
    projector_bytes: int = 0  # --mmproj weights, in nonrepeating_bytes (planner.with_projector)

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
            "projector_mib": _mib(self.projector_bytes),
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
    cells = -(-ctx // KV_CTX_PAD) * KV_CTX_PAD
    swa = swa_cells(info, cells, n_parallel, n_ubatch, kv_unified, flavor, swa_full)
    is_swa = list(info.swa_layers) + [False] * info.n_layer
    kv_per_layer = [
        (swa if is_swa[il] else cells)
        * (kv_row_bytes(kv_type, h * info.key_length) + kv_row_bytes(v_type, h * info.value_length))
        for il, h in enumerate(info.n_head_kv[: info.n_layer])
    ]
    nonrepeating = info.nonrepeating_bytes
    if gpu and info.tensor_bytes("output.weight"):
        nonrepeating -= info.tensor_bytes("token_embd.weight")  # input embeddings stay on host
    weights = sum(info.layer_bytes) + nonrepeating
    compute = _compute_bytes(info, cells, n_parallel, n_batch, n_ubatch, flash_attn, kv_unified, flavor)
    if flash_attn and swa != cells and any(info.swa_layers):
        # the SWA cache has its own f16 mask, ubatch x cells of one stream
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
    )


def swa_cells(
    info: ModelInfo, cells: int, n_parallel: int, n_ubatch: int, kv_unified: bool, flavor: str, swa_full: bool
) -> int:
    """KV cells (all streams together) of the sliding-window layers' cache.

    Upstream's llama_kv_cache_iswa gives each stream min(its share of the context,
    pad256(window x sequences-in-the-stream + ubatch)): the window of every sequence plus
    one ubatch being written (measured on Gemma 3 270M: 1024 cells at -c 4096..8192 -np 1,
    1536 unified with -np 2, 2 x 1024 split with -np 2). `--swa-full`, models without SWA,
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
    activations = ub * 4 * (per_token + 10)
    kv_seq = cells if kv_unified else -(-cells // n_parallel)
    if flash_attn:
        # ik builds its SWA mask as large as the (full-size) cache, beside the causal one
        masks = 2 if flavor == "ik" and any(info.swa_layers) else 1
        total = activations + masks * ub * kv_seq * 2
    else:
        total = max(activations, ub * kv_seq * (4 * info.n_head + 4) + ub * 4 * 8 * e)
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
    e, k, f = info.n_embd, info.n_expert_used, info.n_ff_exp
    ffn = 3 * f * k + 5 * e + (e * k if e > 2 * f and k > 1 else 0)
    return max(ffn, _attention_floor(info))


def ik_activation_floats(info: ModelInfo) -> int:
    """ik_llama.cpp's peak in f32 values per ubatch token (0.1.5, CPU, flash attention).

    ik fuses the FFN's gate, up and activation, so a dense layer peaks at 3F + max(2Q, 2E)
    and a MoE layer at K(E + F) + max(2Q, 3E), Q = n_head x head_dim; never below 4Q.
    Measured on tiny llama, qwen3, qwen3moe and gpt-oss shapes: exact (0.5 %) on 14 of 20,
    up to a quarter over where the FFN is narrow (F <= 2E), 8 % under on one qwen3 shape
    with Q = E / 2 (real models have Q >= E).
    """
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
# ik:       "llm_load_tensors:      CUDA0 buffer size =  3745.00 MiB" (no "model")
#           "llama_kv_cache_init:      CUDA0 KV buffer size =   256.00 MiB"
#           "llama_new_context_with_model:      CUDA0 compute buffer size =   258.50 MiB"
_BUFFER_RE = re.compile(
    r"(?P<dev>\S+)\s+(?:(?P<kind>model|KV|compute|output)\s+)?buffer size\s*=\s*(?P<mib>\d+(?:\.\d+)?)\s*MiB"
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
_KIND_FIELD = {None: "model", "model": "model", "KV": "kv", "compute": "compute", "output": "output"}


def parse_buffer_lines(lines: Iterable[str]) -> Measured:
    """Sum the buffer sizes llama-server logged (either fork), per kind and per device.

    Every buffer line counts, so a draft model's buffers add to the main model's: feed one
    process's log. When no per-buffer lines are present, the last `memory breakdown [MiB]`
    table is used instead (its "context" column counts as KV); the first table upstream
    prints with `-fit on` is only a projection and the one printed at exit replaces it.
    """
    per_dev: dict[str, dict[str, int]] = {}
    table: dict[str, dict[str, int]] = {}
    offloaded: tuple[int, int] | None = None
    for line in lines:
        if m := _BUFFER_RE.search(line):
            d = per_dev.setdefault(m["dev"], {})
            kind = _KIND_FIELD[m["kind"]]
            d[kind] = d.get(kind, 0) + round(float(m["mib"]) * MIB)
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
    )
