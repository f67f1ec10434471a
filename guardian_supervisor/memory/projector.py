"""A vision projector's (--mmproj) memory, from its GGUF metadata, and the lines that measure it.

llama-server loads the projector through tools/mtmd/clip.cpp, apart from the text model:
one weights buffer holding every tensor the file has (clip logs the sum as "load_hparams:
model size: X MiB") and one compute buffer that clip reserves at load by building the
encoder graph for its warm-up image (image_size x image_size, the largest it is given) and
logs as "reserve_compute_meta: CPU compute buffer size" (ik_llama.cpp: "alloc_compute_meta").
Both go to the first GPU unless --no-mmproj-offload (or upstream's `-mmdev none`) keeps them
in system RAM.

The compute buffer is ggml's graph allocator's high-water mark over the ViT encoder, the
largest of these stages (all activations f32, `n` = patches + a class token if any, `r` rows
of width E that live beside the big tensors, which depend on clip.cpp's graph builder):
- attention without flash attention: the n x n scores of every head, `4 n (n_head n + r E)`,
  r = 5 in the llava graph, 6 in the shared build_vit (SigLIP: gemma3 and most others).
  ik_llama.cpp's clip always runs this way (mtmd.cpp sets CLIP_FLASH_ATTN_TYPE_DISABLED);
  upstream does with -fa off. With flash attention no scores are kept: `4 n r E` (q, k, v,
  their f16 copies, the output), r = 6 (llava) or 5 (build_vit).
- the FFN: `4 n (n_ff + r E)`, r = 4 (llava) or 3 (build_vit); the largest stage with flash
  attention when n_ff is ViT-like (about 4 E).
- the projector: `4 T (hidden + n_embd_out) + 8 n E`, T the image's tokens after any merge
  (gemma3 pools 4 x 4 patches into one).
- the input: the f32 image plus its im2col copy in the patch kernel's type, `(12 + 3 kb) s^2`;
  without flash attention a narrow tower (E = 64) also keeps the image's block beside the
  scores, `4 n_head n^2 + 12 s^2`.
plus 52 bytes per position of smaller tensors. Measured on upstream build 11434 and
ik_llama.cpp (CPU) with generated projectors (tests/families/projector_families.py): llava
("mlp"), fitted on 40 and checked on 24 more it never saw, weights + compute within 5 % in 204
of 208 launches (both forks, -fa on and off), the four others −5.8..+8.8 %, all with flash
attention, where the allocator's fragmentation moves small graphs either way; gemma3, 19
shapes on both forks, 69 of 70 launches within 5 % (one −5.9 %); at real widths (a
SigLIP-so400m-like gemma3 tower at 448 px, a CLIP-L/336 llava one, 2-3 layers) -1.2..+0.1 %.
Compute alone is within ~10 % on ViT-like shapes (n_ff >= 2 E, E >= 128). Other projector
types use the build_vit terms at their image_size, unmeasured; types that shrink the warm-up
image (dynamic resolution: qwen2vl and kin) land above what clip reserves. An audio-only
projector gets no compute estimate (its weights still count).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from guardian_supervisor.memory.gguf_info import ModelInfo

F32 = 4
POS_EXTRA_BYTES = 52  # per position: norms' statistics, positions, the patch index, ...


@dataclass(frozen=True)
class ProjectorShape:
    """What sizes the encoder graph clip builds for its warm-up image."""

    projector_type: str
    image_size: int
    patch_size: int
    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int
    n_patches: int
    n_pos: int  # patches, plus one where the file has a class embedding (v.class_embd)
    proj_hidden: int  # the projector MLP's inner width (the first mm.* matrix's output)
    n_embd_out: int  # the projector's output width: the text model's n_embd
    kernel_bytes: int  # bytes per element of the patch kernel: im2col's copy of the image
    n_merge: int = 1  # patches merged per side before the projector (gemma3 pools 4 x 4)

    @property
    def n_tokens_out(self) -> int:
        """The image's tokens in the text model's prompt."""
        return self.n_patches // self.n_merge**2


def _u(meta: dict[str, object], key: str, default: int = 0) -> int:
    v = meta.get(key, default)
    return int(v) if isinstance(v, int | float) else default


def projector_shape(info: ModelInfo) -> ProjectorShape | None:
    """The vision encoder's shape from a clip GGUF's clip.vision.* keys; None where the file
    has no vision encoder (an audio projector, or not a projector at all)."""
    meta = info.metadata
    image, patch = _u(meta, "clip.vision.image_size"), _u(meta, "clip.vision.patch_size")
    if not meta.get("clip.has_vision_encoder") or image < 1 or patch < 1:
        return None
    tensors = {t.name: t for t in info.tensors}
    n_patches = (image // patch) ** 2
    mm = sorted(
        (
            t
            for t in info.tensors
            if t.name.startswith("mm.") and t.name.endswith(".weight") and len(t.shape) == 2
        ),
        key=lambda t: t.name,
    )
    out = _u(meta, "clip.vision.projection_dim") or (mm[-1].shape[1] if mm else 0)
    kernel = tensors.get("v.patch_embd.weight")
    kernel_bytes = max(1, round(kernel.n_bytes / kernel.n_elements)) if kernel and kernel.n_elements else 2
    ptype = meta.get("clip.projector_type") or meta.get("clip.vision.projector_type") or ""
    return ProjectorShape(
        projector_type=str(ptype),
        image_size=image,
        patch_size=patch,
        n_embd=_u(meta, "clip.vision.embedding_length"),
        n_ff=_u(meta, "clip.vision.feed_forward_length"),
        n_head=max(1, _u(meta, "clip.vision.attention.head_count", 1)),
        n_layer=_u(meta, "clip.vision.block_count"),
        n_patches=n_patches,
        n_pos=n_patches + (1 if "v.class_embd" in tensors else 0),
        proj_hidden=mm[0].shape[1] if len(mm) > 1 else 0,
        n_embd_out=out,
        kernel_bytes=kernel_bytes,
        n_merge=_u(meta, "clip.vision.projector.scale_factor") or (4 if ptype == "gemma3" else 1),
    )


# Rows of width E live beside the attention scores / the FFN activations, per graph builder:
# clip.cpp's clip_graph_llava (these types) and its shared build_vit (SigLIP: gemma3 and most).
_LLAVA_GRAPH = frozenset({"mlp", "mlp_norm", "ldp", "ldpv2", "adapter"})
# (beside the scores, beside the FFN activations, with flash attention's q/k/v and copies)
_ROWS_LLAVA, _ROWS_VIT = (5, 4, 6), (6, 3, 5)


def projector_compute_stages(shape: ProjectorShape, flash_attn: bool) -> dict[str, int]:
    """Bytes live at each stage of the encoder graph (see the module docstring)."""
    n, e = shape.n_pos, shape.n_embd
    attn_rows, ffn_rows, fa_rows = _ROWS_LLAVA if shape.projector_type in _LLAVA_GRAPH else _ROWS_VIT
    stages = {
        "ffn": F32 * n * (shape.n_ff + ffn_rows * e),
        "projector": F32 * shape.n_tokens_out * (shape.proj_hidden + shape.n_embd_out) + 2 * F32 * n * e,
        "input": (3 * F32 + 3 * shape.kernel_bytes) * shape.image_size**2,
    }
    # flash attention keeps no scores: q, k, v, their f16 copies, the output and the residual
    stages["attention"] = F32 * n * (fa_rows * e if flash_attn else shape.n_head * n + attn_rows * e)
    if not flash_attn:  # a narrow tower leaves the f32 image's block unreused beside the scores
        stages["scores+image"] = F32 * shape.n_head * n * n + 3 * F32 * shape.image_size**2
    return stages


def projector_compute_bytes(shape: ProjectorShape, flash_attn: bool) -> int:
    """The compute buffer clip reserves for its warm-up image."""
    return max(projector_compute_stages(shape, flash_attn).values()) + POS_EXTRA_BYTES * shape.n_pos


@dataclass(frozen=True)
class ProjectorEstimate:
    weights_bytes: int
    compute_bytes: int
    flash_attn: bool  # whether clip's graph uses flash attention (the scores matrix or not)


def estimate_projector(
    info: ModelInfo, *, flavor: str = "upstream", flash_attn: bool = True
) -> ProjectorEstimate:
    """Weights (every tensor in the file) and the warm-up compute buffer of a projector.

    Upstream's clip follows the server's -fa (auto: on where the backend supports it);
    ik_llama.cpp's never uses flash attention."""
    fa = flash_attn and flavor != "ik"
    shape = projector_shape(info)
    compute = projector_compute_bytes(shape, fa) if shape is not None else 0
    return ProjectorEstimate(info.weights_bytes, compute, fa)


def projector_in_ram(args: Iterable[str]) -> bool:
    """Whether launch arguments keep the projector in system RAM: --no-mmproj-offload (both
    forks) or upstream's -mmdev/--mmproj-device none. The last of them wins, as in llama.cpp's
    argument parser."""
    words = list(args)
    in_ram = False
    for i, w in enumerate(words):
        flag, eq, value = w.partition("=")
        if w in ("--no-mmproj-offload", "--mmproj-offload"):
            in_ram = w == "--no-mmproj-offload"
        elif flag in ("-mmdev", "--mmproj-device"):
            value = value if eq else (words[i + 1] if i + 1 < len(words) else "")
            in_ram = value.strip().lower() == "none"
    return in_ram


# upstream: "load_hparams: model size:         3.12 MiB"
#           "reserve_compute_meta:        CPU compute buffer size =     1.52 MiB"
# ik:       the same, with "alloc_compute_meta:"
_CLIP_WEIGHTS_RE = re.compile(r"load_hparams:\s+model size:\s+(?P<mib>\d+(?:\.\d+)?)\s*MiB")
_CLIP_COMPUTE_RE = re.compile(
    r"(?:reserve|alloc)_compute_meta:\s+(?P<dev>\S+)\s+compute buffer size\s*=\s*(?P<mib>\d+(?:\.\d+)?)\s*MiB"
)
CLIP_COMPUTE_MARK = "_compute_meta:"  # in clip's compute lines only, never in the text model's


@dataclass(frozen=True)
class ProjectorMeasured:
    weights_bytes: int
    compute_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.compute_bytes


def parse_projector_lines(lines: Iterable[str]) -> ProjectorMeasured | None:
    """What clip logged for the projector; None if the log has no projector. A warm-up that
    retries without flash attention reserves twice: the last buffer per device counts."""
    weights = 0
    compute: dict[str, int] = {}
    seen = False
    for line in lines:
        if m := _CLIP_WEIGHTS_RE.search(line):
            weights, seen = round(float(m["mib"]) * (1 << 20)), True
        elif m := _CLIP_COMPUTE_RE.search(line):
            compute[m["dev"]] = round(float(m["mib"]) * (1 << 20))
    return ProjectorMeasured(weights, sum(compute.values())) if seen else None


def ik_mtmd_ubatch(n_ctx: int, n_batch: int = 2048, n_ubatch: int = 512) -> int:
    """The micro-batch ik_llama.cpp runs a text model with when --mmproj is given.

    ik's common.cpp (get_batch_ubatch) raises n_ubatch to n_batch (itself capped at -c) for
    any projector, "temporary fix for qwen mtmd": the text model's compute buffer grows ~4x
    at the default -b 2048 -ub 512. Upstream keeps -ub as given."""
    batch = min(n_batch, n_ctx) if n_ctx > 0 else n_batch
    return max(batch, n_ubatch)
