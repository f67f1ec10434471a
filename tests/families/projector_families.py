"""Tiny random-weight vision projector (--mmproj) GGUFs and the text models they belong to.

The main one is a llava-style CLIP file (clip.projector_type "mlp"), the simplest type both
forks' tools/mtmd/clip.cpp load: a ViT (class embedding, learned positions, pre-norm, n
layers of biased attention + GELU FFN) whose second-to-last layer feeds a two-layer MLP
(mm.0, GELU, mm.2) into the text model's embedding space. Keys are clip-impl.h's KEY_*
(clip.vision.*), tensor names its TN_* ("v.blk.N.attn_q.weight", "mm.0.weight"...). mtmd
refuses a projector whose output width (mm.2's rows) differs from the text model's n_embd,
so `write_pair` writes both from one spec. A "gemma3" variant (SigLIP: patch bias, no class
token, post-norm, all layers; then a 4x4 average pool, an RMS norm and mm.input_projection)
checks the estimate on a second type. numpy (rows, cols) is ggml ne = [cols, rows]; the
patch convolution kernel ne = [patch, patch, 3, n_embd] is numpy (n_embd, 3, patch, patch).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from guardian_supervisor.demo_models import TinySpec, write_gguf_atomic, write_tiny_llama


@dataclass(frozen=True)
class ProjectorSpec:
    image_size: int = 224
    patch_size: int = 14
    n_embd: int = 192  # the vision tower's width
    n_head: int = 6  # head dim 32
    n_ff: int = 768
    n_layer: int = 3  # llava reads the second-to-last layer: 2 run
    proj_hidden: int = 256  # mm.0's output width
    n_embd_text: int = 128  # mm.2's output width = the text model's n_embd
    dtype: str = "f16"  # matrices; 1-d tensors stay f32, as in real mmproj files
    projector_type: str = "mlp"  # or "gemma3": SigLIP (no class token), 4x4 average pool, one matrix
    seed: int = 21
    name: str = "tiny-mmproj"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must divide by n_head")
        if self.projector_type not in ("mlp", "gemma3"):
            raise ValueError(f"projector_type must be 'mlp' or 'gemma3', not {self.projector_type!r}")
        if self.n_layer < 2:
            raise ValueError("a llava projector reads layer n_layer - 1: it needs two layers at least")
        if self.projector_type == "gemma3" and (self.image_size // self.patch_size) % 4:
            raise ValueError("gemma3 pools 4x4 patches: patches per side must divide by 4")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_tokens_out(self) -> int:
        """The image's tokens in the prompt: gemma3 pools 4 x 4 patches into one."""
        return self.n_patches // (16 if self.projector_type == "gemma3" else 1)


def write_projector(path: Path, spec: ProjectorSpec = ProjectorSpec()) -> Path:
    """Write a random-weight llava ("mlp") projector to `path` atomically."""
    rng = np.random.default_rng(spec.seed)
    wdtype = np.float32 if spec.dtype == "f32" else np.float16

    def mat(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(wdtype)

    def vec(n: int, value: float = 0.0) -> np.ndarray:
        return np.full(n, value, dtype=np.float32)

    def fill(w: gguf.GGUFWriter) -> None:
        e, ff, p = spec.n_embd, spec.n_ff, spec.patch_size
        w.add_name(spec.name)
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if spec.dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        w.add_bool("clip.has_vision_encoder", True)
        w.add_string("clip.projector_type", spec.projector_type)
        w.add_bool("clip.use_gelu", True)
        w.add_uint32("clip.vision.image_size", spec.image_size)
        w.add_uint32("clip.vision.patch_size", p)
        w.add_uint32("clip.vision.embedding_length", e)
        w.add_uint32("clip.vision.feed_forward_length", ff)
        w.add_uint32("clip.vision.block_count", spec.n_layer)
        w.add_uint32("clip.vision.attention.head_count", spec.n_head)
        w.add_uint32("clip.vision.projection_dim", spec.n_embd_text)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
        w.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
        w.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])

        gemma3 = spec.projector_type == "gemma3"
        w.add_tensor("v.patch_embd.weight", mat(e, 3, p, p))
        if gemma3:  # SigLIP: a patch bias, no class token, a norm after the layers
            w.add_tensor("v.patch_embd.bias", vec(e))
            w.add_tensor("v.position_embd.weight", mat(spec.n_patches, e).astype(np.float32))
            w.add_tensor("v.post_ln.weight", vec(e, 1.0))
            w.add_tensor("v.post_ln.bias", vec(e))
        else:
            w.add_tensor("v.class_embd", vec(e))
            w.add_tensor("v.position_embd.weight", mat(spec.n_patches + 1, e).astype(np.float32))
            w.add_tensor("v.pre_ln.weight", vec(e, 1.0))
            w.add_tensor("v.pre_ln.bias", vec(e))
        for i in range(spec.n_layer):
            b = f"v.blk.{i}."
            for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
                w.add_tensor(b + t + ".weight", mat(e, e))
                w.add_tensor(b + t + ".bias", vec(e))
            for t in ("ln1", "ln2"):
                w.add_tensor(b + t + ".weight", vec(e, 1.0))
                w.add_tensor(b + t + ".bias", vec(e))
            w.add_tensor(b + "ffn_up.weight", mat(ff, e))  # ne [e, ff]: clip.cpp swaps it otherwise
            w.add_tensor(b + "ffn_up.bias", vec(ff))
            w.add_tensor(b + "ffn_down.weight", mat(e, ff))
            w.add_tensor(b + "ffn_down.bias", vec(e))
        if gemma3:  # ne [n_embd_text, E]: clip transposes it before the product
            w.add_tensor("mm.input_projection.weight", mat(e, spec.n_embd_text))
            w.add_tensor("mm.soft_emb_norm.weight", vec(e, 1.0))
        else:
            w.add_tensor("mm.0.weight", mat(spec.proj_hidden, e))
            w.add_tensor("mm.0.bias", vec(spec.proj_hidden))
            w.add_tensor("mm.2.weight", mat(spec.n_embd_text, spec.proj_hidden))
            w.add_tensor("mm.2.bias", vec(spec.n_embd_text))

    return write_gguf_atomic(path, "clip", fill)


# Projector shapes the estimate is measured on: the default, a larger image (the attention
# terms grow with patches squared) and a wider tower with a wider text model.
PROJECTORS: dict[str, ProjectorSpec] = {
    "mlp-224": ProjectorSpec(),
    "mlp-336": ProjectorSpec(name="tiny-mmproj-336", image_size=336, seed=22),
    "mlp-wide": ProjectorSpec(
        name="tiny-mmproj-wide", n_embd=256, n_head=8, n_ff=1024, n_layer=4, proj_hidden=512,
        n_embd_text=256, image_size=192, patch_size=16, seed=23,
    ),
    "gemma3-224": ProjectorSpec(name="tiny-mmproj-gemma3", projector_type="gemma3", seed=24),
}  # fmt: skip


def write_pair(directory: Path, key: str) -> tuple[Path, Path]:
    """(text model, projector) of PROJECTORS[key]; the text model's n_embd matches."""
    spec = PROJECTORS[key]
    heads = spec.n_embd_text // 32  # TinySpec wants a head dim of 32
    text = TinySpec(
        name=f"tiny-text-{key}", n_embd=spec.n_embd_text, n_head=heads, n_head_kv=heads, seed=spec.seed
    )
    text_path = write_tiny_llama(directory / f"text-{key}.gguf", text)
    return text_path, write_projector(directory / f"mmproj-{key}.gguf", spec)


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A small RGB PNG of random pixels (zlib + CRC by hand: no imaging library needed)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
