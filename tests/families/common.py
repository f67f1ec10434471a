"""What every tiny-family GGUF writer shares: tensor names, random weights, the file type.

numpy shape (rows, cols) becomes ggml ne = [cols, rows]; a ggml tensor {a, b, c, d} is
numpy (d, c, b, a).
"""

from __future__ import annotations

import gguf
import numpy as np


def tname(tensor: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    """gguf-py's name of `tensor` (of block `bid`), with its suffix."""
    base = gguf.TENSOR_NAMES[tensor].format(bid=bid)
    return f"{base}.{suffix}" if suffix else base


def file_type(dtype: str) -> gguf.LlamaFileType:
    return gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32


class Weights:
    """Random matrices (small std keeps activations finite); vectors and norms stay f32,
    as in real models."""

    def __init__(self, seed: int, dtype: str) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtype = np.float32 if dtype == "f32" else np.float16

    def mat(self, *shape: int) -> np.ndarray:
        return (self.rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(self.dtype)

    def vec(self, *shape: int) -> np.ndarray:
        """Small random f32 values (lerp factors, decays, biases): elementwise operands."""
        return self.rng.standard_normal(shape, dtype=np.float32) * 0.02

    @staticmethod
    def ones(*shape: int) -> np.ndarray:
        return np.ones(shape, dtype=np.float32)

    @staticmethod
    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)
