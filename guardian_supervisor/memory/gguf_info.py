"""Read what Guardian needs from a GGUF file's header, without loading any weights.

Two readers produce the same result (a test holds them to it):
- `_parse_header` ("native"), the default: a small tolerant parser that reads the KV pairs
  and tensor infos and takes the size of a tensor of unknown type from the gap between
  sorted data offsets (the last one runs to the end of the file). It reads a 150k-token
  vocabulary in ~0.1 s.
- the `gguf` package's GGUFReader ("gguf-py"), with `prefer_gguf_py=True`. It needs ~7 s
  for the same vocabulary (it builds numpy views per array entry) and refuses tensor types
  it does not know (ik_llama.cpp quants such as IQ4_K = 139); on any error it falls back
  to the native parser.
A file that is not GGUF at all, or is cut short, raises `GGUFError` with a reason a human
can act on. This is blocking file I/O: call it off the event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import gguf

# Arrays longer than this are emptied in metadata unless asked for (as Ollama's /api/show).
SHOW_ARRAY_LIMIT = 5

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
_TOOLS_RE = re.compile(r"\btools\b")

# Tensor type names beyond the PyPI gguf package's enum: ik_llama.cpp ggml.h (ggml_type).
_IK_TYPE_NAMES: dict[int, str] = {
    31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8", 36: "I2_S", 133: "Q6_0", 134: "IQ1_BN",
    135: "IQ2_BN", 136: "Q8_K64", 137: "IQ2_K", 138: "IQ3_K", 139: "IQ4_K", 140: "IQ5_K",
    141: "IQ6_K", 144: "IQ4_KS", 145: "IQ2_KS", 146: "IQ4_KSS", 147: "Q8_K16", 148: "Q8_K32",
    149: "Q8_KR8", 150: "Q8_K128", 151: "Q8_KV", 202: "Q4_0_R8", 206: "Q5_0_R4", 208: "Q8_0_R8",
    210: "Q2_K_R4", 211: "Q3_K_R4", 212: "Q4_K_R4", 213: "Q5_K_R4", 214: "Q6_K_R4",
    220: "IQ4_NL_R4", 223: "IQ4_XS_R8", 230: "BF16_R16", 233: "Q6_0_R4", 337: "IQ2_K_R4",
    338: "IQ3_K_R4", 339: "IQ4_K_R4", 340: "IQ5_K_R4", 344: "IQ4_KS_R4",
}  # fmt: skip

# general.file_type values beyond the PyPI enum: ik_llama.cpp include/llama.h (llama_ftype).
_IK_FTYPE_NAMES: dict[int, str] = {
    135: "Q6_0", 136: "IQ1_BN", 137: "IQ2_BN", 138: "IQ2_K", 139: "IQ3_K", 140: "IQ4_K",
    141: "IQ5_K", 142: "IQ6_K", 145: "IQ4_KS", 146: "IQ3_KL", 147: "IQ2_KS", 148: "IQ4_KSS",
    149: "Q8_KV", 150: "IQ5_KS", 151: "IQ2_KT", 152: "IQ3_KT", 153: "IQ4_KT", 154: "IQ3_KS",
    155: "IQ2_KL", 156: "IQ1_KT", 202: "Q4_0_R8", 207: "Q8_0_R8",
}  # fmt: skip


class GGUFError(ValueError):
    """A file that cannot be read as a GGUF model; `reason` says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]  # ggml order: ne[0] first
    n_elements: int
    n_bytes: int
    offset: int  # relative to the start of the data section


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    file_size: int
    architecture: str
    name: str
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: list[int]  # one entry per layer
    key_length: int
    value_length: int
    n_vocab: int
    n_ff: int
    file_type: str
    parameter_count: int
    parameter_size: str
    chat_template: str | None
    layer_bytes: list[int]  # tensor bytes of blk.N.*, index N
    nonrepeating_bytes: int  # token_embd, output, output_norm and anything outside blk.N
    metadata: dict[str, Any]  # GGUF KV pairs; arrays over SHOW_ARRAY_LIMIT emptied unless kept
    has_tool_template: bool
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    arrays_kept: bool = False
    reader: str = "native"  # "native" (_parse_header) or "gguf-py" (gguf.GGUFReader)
    sliding_window: int = 0  # {arch}.attention.sliding_window; 0 = no sliding-window attention
    swa_layers: tuple[bool, ...] = ()  # per layer: True where the layer attends to the window only
    # Mixture of experts ({arch}.expert_count etc.); 0 = a dense FFN. n_ff_exp is one expert's
    # FFN width (expert_feed_forward_length, else n_ff / n_expert_used as qwen3moe falls back).
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0 and self.n_expert_used > 0

    # Multi-head latent attention (deepseek2 and kin): both *_mla head sizes set, see `is_mla`.
    kv_lora_rank: int = 0  # {arch}.attention.kv_lora_rank: the compressed latent per token
    key_length_mla: int = 0
    value_length_mla: int = 0
    rope_dim: int = 0  # {arch}.rope.dimension_count (0 = absent)
    # Mamba/Mamba2 state sizes ({arch}.ssm.*); recurrent_layers[il] is True for a state layer.
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    recurrent_layers: tuple[bool, ...] = ()
    has_kv_cache: bool = True  # False for encoders (bert...): llama.cpp creates no memory for them
    # RWKV state sizes: {arch}.wkv.head_size (0 = not RWKV) and {arch}.token_shift_count.
    wkv_head_size: int = 0
    token_shift_count: int = 2
    # {arch}.interleave_moe_layer_step (llama4): every n-th layer MoE, the rest dense; 0 = absent
    moe_layer_step: int = 0

    @property
    def is_mla(self) -> bool:
        """llama_hparams::is_mla: the cache holds one latent row (K only) per token and layer."""
        return bool(self.key_length_mla and self.value_length_mla)

    @property
    def quantization_level(self) -> str:
        return self.file_type

    @property
    def weights_bytes(self) -> int:
        return sum(self.layer_bytes) + self.nonrepeating_bytes

    def tensor_bytes(self, name: str) -> int:
        """Bytes of one tensor by exact name; 0 when absent."""
        return next((t.n_bytes for t in self.tensors if t.name == name), 0)

    def metadata_for_show(self, verbose: bool) -> dict[str, Any]:
        """KV pairs for Ollama's /api/show `model_info`: long arrays emptied unless verbose.

        Verbose output of an info read without `keep_arrays` re-reads the file (blocking I/O).
        """
        meta = self.metadata
        if verbose and not self.arrays_kept:
            meta = read_model_info(self.path, keep_arrays=True).metadata
        out = {k: _show_value(v, verbose) for k, v in meta.items()}
        out.setdefault("general.parameter_count", self.parameter_count)
        return out


def _show_value(value: Any, verbose: bool) -> Any:
    if isinstance(value, list) and len(value) > SHOW_ARRAY_LIMIT and not verbose:
        return []
    return value


def file_digest(path: Path) -> str:
    """An identity digest (64 hex chars) from the resolved path, size and mtime.

    NOT a content hash: hashing a 40 GB file takes minutes. Two different files give
    different digests; the same file gives the same digest until it is modified.
    """
    p = Path(path).resolve()
    st = p.stat()
    return hashlib.sha256(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def human_number(n: int) -> str:
    """Ollama's `format.HumanNumber` (format/format.go): 7.6B, 494.03M, 8B, 124K."""
    if n >= 1_000_000_000:
        v = n / 1_000_000_000
        return f"{v:.0f}B" if v == int(v) else f"{v:.1f}B"
    if n >= 1_000_000:
        v = n / 1_000_000
        return f"{v:.0f}M" if v == int(v) else f"{v:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def type_name(type_id: int) -> str:
    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return _IK_TYPE_NAMES.get(type_id, f"TYPE_{type_id}")


def _ftype_name(ftype: int) -> str | None:
    ftype &= ~int(gguf.LlamaFileType.GUESSED)  # flag bit set by old converters
    try:
        name = gguf.LlamaFileType(ftype).name
    except ValueError:
        return _IK_FTYPE_NAMES.get(ftype)
    return name.removeprefix("ALL_").removeprefix("MOSTLY_")


def _exact_bytes(type_id: int, n_elements: int) -> int | None:
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        return None
    return n_elements // block * size


# --- reading ------------------------------------------------------------------------------


@dataclass
class _Raw:
    kv: dict[str, Any]
    tensors: list[TensorInfo]
    reader: str
    data_start: int  # file offset of the tensor data section


def read_model_info(path: Path, *, keep_arrays: bool = False, prefer_gguf_py: bool = False) -> ModelInfo:
    """Read a GGUF header into a ModelInfo. Raises GGUFError for non-GGUF or truncated files.

    keep_arrays: decode long tokenizer arrays into `metadata` (otherwise emptied).
    prefer_gguf_py: try gguf.GGUFReader first (slow on big vocabularies), native on error.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGUFError(path, f"cannot read file: {e.strerror or e}") from e
    if magic != b"GGUF":
        raise GGUFError(path, f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    raw: _Raw | None = None
    if prefer_gguf_py:
        try:
            raw = _read_with_gguf_py(path, keep_arrays)
        except Exception:
            pass  # unknown tensor types, malformed files: the native parser says precisely why
    if raw is None:
        with open(path, "rb") as f:
            raw = _parse_header(f, path, file_size, keep_arrays)
    end = max((raw.data_start + t.offset + t.n_bytes for t in raw.tensors), default=0)
    if end > file_size:
        raise GGUFError(path, f"truncated: tensor data ends at byte {end} but the file has {file_size}")
    return _build(path, file_size, raw, keep_arrays)


def _read_with_gguf_py(path: Path, keep_arrays: bool) -> _Raw:
    reader = gguf.GGUFReader(path, "r")
    kv: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # reader's own pseudo-fields (version, counts)
        main = fld.types[0] if fld.types else None
        if main == gguf.GGUFValueType.ARRAY:
            n = len(fld.data)
            if n > SHOW_ARRAY_LIMIT and not keep_arrays and key.startswith("tokenizer."):
                kv[key] = _SkippedArray(n)  # vocabularies: only their length is needed
                continue
            sub = fld.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                kv[key] = [bytes(fld.parts[i]).decode("utf-8", "replace") for i in fld.data]
            else:
                kv[key] = [v for i in fld.data for v in fld.parts[i].tolist()]
        elif main == gguf.GGUFValueType.STRING:
            kv[key] = bytes(fld.parts[-1]).decode("utf-8", "replace")
        else:
            kv[key] = fld.parts[-1].tolist()[0]
    tensors = [
        TensorInfo(
            name=t.name,
            type_id=int(t.tensor_type),
            type_name=t.tensor_type.name,
            shape=tuple(int(x) for x in t.shape),
            n_elements=int(t.n_elements),
            n_bytes=int(t.n_bytes),
            offset=int(t.data_offset) - int(reader.data_offset),
        )
        for t in reader.tensors
    ]
    return _Raw(kv, tensors, "gguf-py", int(reader.data_offset))


class _SkippedArray(list[Any]):
    """Stands in for a long array that was not decoded; remembers its length."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length


_SCALARS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # fmt: skip


class _Reader:
    """Bounds-checked little/big-endian reads; running off the end means a truncated file."""

    def __init__(self, f: BinaryIO, path: Path, file_size: int) -> None:
        self.f, self.path, self.size, self.endian = f, path, file_size, "<"

    def take(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise GGUFError(self.path, f"truncated header (wanted {n} bytes at offset {self.f.tell()})")
        return b

    def num(self, code: str) -> Any:
        return struct.unpack(self.endian + code, self.take(struct.calcsize(code)))[0]

    def string(self) -> str:
        n = self.num("Q")
        if n > self.size:
            raise GGUFError(self.path, f"corrupt string length {n}")
        return self.take(n).decode("utf-8", "replace")

    def value(self, vtype: int, keep_arrays: bool) -> Any:
        if vtype == 8:
            return self.string()
        if vtype == 9:
            sub, n = self.num("I"), self.num("Q")
            if n > self.size:
                raise GGUFError(self.path, f"corrupt array length {n}")
            if sub in _SCALARS:
                code = _SCALARS[sub]
                data = self.take(n * struct.calcsize(code))
                return list(struct.unpack(f"{self.endian}{n}{code}", data))
            if sub == 8 and n > SHOW_ARRAY_LIMIT and not keep_arrays:
                for _ in range(n):  # skip over strings without decoding them
                    self.take(self.num("Q"))
                return _SkippedArray(n)
            return [self.value(sub, keep_arrays) for _ in range(n)]
        if vtype in _SCALARS:
            return self.num(_SCALARS[vtype])
        raise GGUFError(self.path, f"unknown metadata value type {vtype}")


def _parse_header(f: BinaryIO, path: Path, file_size: int, keep_arrays: bool) -> _Raw:
    r = _Reader(f, path, file_size)
    r.take(4)  # magic, already checked
    version = r.num("I")
    if version & 0xFFFF == 0:  # a big-endian file read little-endian
        r.endian = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in (2, 3):
        raise GGUFError(path, f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.num("Q"), r.num("Q")
    if n_tensors > file_size or n_kv > file_size:
        raise GGUFError(path, "corrupt header counts")
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        kv[key] = r.value(r.num("I"), keep_arrays)
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.num("I")
        if n_dims > 8:
            raise GGUFError(path, f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(r.num("Q") for _ in range(n_dims))
        infos.append((name, shape, r.num("I"), r.num("Q")))
    align = int(kv.get("general.alignment", 32)) or 32
    data_start = -(-f.tell() // align) * align
    # Sizes from the gaps between data offsets; the last tensor runs to the end of the file.
    ends = sorted({off for *_, off in infos} | {file_size - data_start})
    next_off = dict(itertools.pairwise(ends))
    tensors = []
    for name, shape, type_id, off in infos:
        n_el = 1
        for d in shape:
            n_el *= d
        exact = _exact_bytes(type_id, n_el)
        gap = next_off.get(off, 0) - off
        if data_start + off + (exact or 0) > file_size or (exact is None and gap <= 0):
            raise GGUFError(path, f"truncated: tensor {name!r} lies past the end of the file")
        tensors.append(TensorInfo(name, type_id, type_name(type_id), shape, n_el, exact or gap, off))
    return _Raw(kv, tensors, "native", data_start)


def _build(path: Path, file_size: int, raw: _Raw, keep_arrays: bool) -> ModelInfo:
    kv = raw.kv
    arch = str(kv.get("general.architecture") or "unknown")

    def get(key: str, default: Any = None) -> Any:
        return kv.get(f"{arch}.{key}", default)

    layer_ids = [int(m.group(1)) for t in raw.tensors if (m := _LAYER_RE.match(t.name))]
    n_layer = int(get("block_count") or (max(layer_ids) + 1 if layer_ids else 0))
    n_embd = int(get("embedding_length") or 0)
    heads = _per_layer(get("attention.head_count", 0), n_layer)
    n_head = max(heads, default=0)
    kv_heads = _per_layer(get("attention.head_count_kv"), n_layer) or heads
    head_dim = n_embd // n_head if n_head else 0
    layer_bytes = [0] * max(n_layer, (max(layer_ids) + 1) if layer_ids else 0)
    nonrepeating = 0
    for t in raw.tensors:
        if m := _LAYER_RE.match(t.name):
            layer_bytes[int(m.group(1))] += t.n_bytes
        else:
            nonrepeating += t.n_bytes
    n_ff = max(_per_layer(get("feed_forward_length", 0), 1), default=0)
    tokens = kv.get("tokenizer.ggml.tokens")
    n_vocab = int(
        get("vocab_size")
        or (tokens.length if isinstance(tokens, _SkippedArray) else len(tokens or []))
        or next((t.shape[1] for t in raw.tensors if t.name == "token_embd.weight" and len(t.shape) > 1), 0)
    )
    template = kv.get("tokenizer.chat_template")
    template = template if isinstance(template, str) else None
    param_count = sum(t.n_elements for t in raw.tensors)
    metadata = {k: ([] if isinstance(v, _SkippedArray) else v) for k, v in kv.items()}
    if not keep_arrays:
        metadata = {k: _show_value(v, False) for k, v in metadata.items()}
    window = swa_window(arch, get("attention.sliding_window"))
    return ModelInfo(
        path=path,
        file_size=file_size,
        architecture=arch,
        name=str(kv.get("general.name") or path.stem),
        n_layer=n_layer,
        n_ctx_train=int(get("context_length") or 0),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=kv_heads,
        key_length=int(get("attention.key_length") or head_dim),
        value_length=int(get("attention.value_length") or head_dim),
        n_vocab=n_vocab,
        n_ff=n_ff,
        file_type=_file_type(kv.get("general.file_type"), raw.tensors),
        parameter_count=param_count,
        parameter_size=human_number(param_count),
        chat_template=template,
        layer_bytes=layer_bytes,
        nonrepeating_bytes=nonrepeating,
        metadata=metadata,
        has_tool_template=bool(template and _TOOLS_RE.search(template)),
        tensors=tuple(raw.tensors),
        arrays_kept=keep_arrays,
        reader=raw.reader,
        sliding_window=window,
        swa_layers=_swa_layers(arch, window, get("attention.sliding_window_pattern"), n_layer),
        **_moe_hparams(get, n_ff),
        kv_lora_rank=int(get("attention.kv_lora_rank") or 0),
        key_length_mla=int(get("attention.key_length_mla") or 0),
        value_length_mla=int(get("attention.value_length_mla") or 0),
        rope_dim=int(get("rope.dimension_count") or 0),
        ssm_d_conv=int(get("ssm.conv_kernel") or 0),
        ssm_d_inner=int(get("ssm.inner_size") or 0),
        ssm_d_state=int(get("ssm.state_size") or 0),
        ssm_n_group=int(get("ssm.group_count") or 0),
        recurrent_layers=_recurrent_layers(arch, kv_heads, n_layer) or _delta_net_layers(arch, get, n_layer),
        has_kv_cache=arch not in ENCODER_ARCHS,
        wkv_head_size=int(get("wkv.head_size") or 0),
        token_shift_count=int(get("token_shift_count") or 2),
        moe_layer_step=int(get("interleave_moe_layer_step") or 0),
    )


# llm_arch_is_recurrent (llama-arch.cpp): every layer holds a recurrent state, none a KV cache.
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
# Hybrids that mark a recurrent layer by head_count_kv = 0 (llama-model's granite-hybrid.cpp, jamba.cpp).
_HYBRID_BY_ZERO_KV_HEADS = frozenset({"granitehybrid", "jamba"})
# Architectures for which llama_model::create_memory makes no KV cache (non-causal encoders).
ENCODER_ARCHS = frozenset(
    {
        "bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "modern-bert",
        "eurobert",
    }
)


def _recurrent_layers(arch: str, kv_heads: list[int], n_layer: int) -> tuple[bool, ...]:
    """Which layers keep a recurrent (Mamba/RWKV) state instead of a KV cache."""
    if arch in RECURRENT_ARCHS:
        return (True,) * n_layer
    if arch in _HYBRID_BY_ZERO_KV_HEADS:
        return tuple(il < len(kv_heads) and kv_heads[il] == 0 for il in range(n_layer))
    return ()


# Hybrids with gated delta-net (linear attention) layers between full-attention ones.
DELTA_NET_HYBRIDS = frozenset({"qwen3next", "qwen35", "qwen35moe"})


def _delta_net_layers(arch: str, get: Callable[..., Any], n_layer: int) -> tuple[bool, ...]:
    """Qwen3-Next / Qwen3.5 recurrent layers: {arch}.attention.recurrent_layers where given,
    else every layer but each full_attention_interval-th (default 4; llama.cpp's
    load_arch_hparams). ik_llama.cpp's qwen3next ignores the key and uses 4 (equal on the
    released models)."""
    if arch not in DELTA_NET_HYBRIDS or n_layer < 1:
        return ()
    flags = get("attention.recurrent_layers")
    if isinstance(flags, list) and len(flags) >= n_layer:
        return tuple(bool(v) for v in flags[:n_layer])
    interval = int(get("full_attention_interval") or 4)
    return tuple((il + 1) % interval != 0 for il in range(n_layer))


# Architectures whose SWA layer pattern llama-model.cpp hard-codes (`set_swa_pattern(n)`: every
# n-th layer, the last of each group, is global); a GGUF array `sliding_window_pattern` wins.
_SWA_PERIOD: dict[str, int] = {"gemma3": 6, "gemma2": 2, "gpt-oss": 2, "cohere2": 4, "llama4": 4}


def _swa_layers(arch: str, window: Any, pattern: Any, n_layer: int) -> tuple[bool, ...]:
    """Which layers use sliding-window attention (llama_hparams::is_swa)."""
    if not window or n_layer < 1:
        return ()
    if isinstance(pattern, list) and len(pattern) >= n_layer:
        return tuple(bool(v) for v in pattern[:n_layer])
    period = int(pattern) if isinstance(pattern, int) and pattern > 0 else _SWA_PERIOD.get(arch, 0)
    if period <= 1:
        return ()  # window given but no known pattern: model it as full attention (an upper bound)
    return tuple(il % period < period - 1 for il in range(n_layer))


# llama4's attention chunk (llama4.cpp: n_swa = 8192 whatever the GGUF says, unless it says 0).
LLAMA4_ATTN_CHUNK = 8192
# Windows llama.cpp assumes when the GGUF has no sliding_window key (gemma2.cpp).
_SWA_DEFAULT_WINDOW: dict[str, int] = {"gemma2": 4096}


def swa_window(arch: str, value: Any) -> int:
    """llama_hparams::n_swa from `{arch}.attention.sliding_window` (`value`, None if absent).

    llama4's chunked attention (LLAMA_SWA_TYPE_CHUNKED) counts here too: its chunked layers
    hold the chunk like a window (llama-kv-cache-iswa.cpp sizes both caches alike); a key
    of 0 turns chunking off (MobileLLM-style llama4), any other value is ignored.
    """
    if arch == "llama4":
        return 0 if value is not None and int(value) == 0 else LLAMA4_ATTN_CHUNK
    if value is None:
        return _SWA_DEFAULT_WINDOW.get(arch, 0)
    return int(value or 0)


def _moe_hparams(get: Callable[..., Any], n_ff: int) -> dict[str, int]:
    """n_expert, n_expert_used and n_ff_exp (each 0 for a dense model); per-layer arrays
    (expert_feed_forward_length of some MoEs) count by their widest layer."""
    n_expert = max(_per_layer(get("expert_count", 0), 1), default=0)
    n_used = max(_per_layer(get("expert_used_count", 0), 1), default=0)
    if not (n_expert and n_used):
        return {"n_expert": 0, "n_expert_used": 0, "n_ff_exp": 0}
    n_ff_exp = max(_per_layer(get("expert_feed_forward_length", 0), 1), default=0) or n_ff // n_used
    return {"n_expert": n_expert, "n_expert_used": n_used, "n_ff_exp": n_ff_exp}


def _per_layer(value: Any, n_layer: int) -> list[int]:
    """A GGUF hparam that may be one number or one per layer, as a per-layer list."""
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)] * max(n_layer, 1)


def _file_type(ftype: Any, tensors: list[TensorInfo]) -> str:
    if isinstance(ftype, int) and (name := _ftype_name(ftype)):
        return name
    # No (or unknown) general.file_type: the tensor type holding the most bytes.
    by_bytes: Counter[str] = Counter()
    for t in tensors:
        by_bytes[t.type_name] += t.n_bytes
    return by_bytes.most_common(1)[0][0] if by_bytes else "unknown"


def _main() -> None:  # debugging aid: python -m guardian_supervisor.memory.gguf_info FILE...
    import sys

    for arg in sys.argv[1:]:
        info = read_model_info(Path(arg))
        print(arg, info.architecture, info.name, info.parameter_size, info.file_type, info.n_layer)


if __name__ == "__main__":
    _main()
