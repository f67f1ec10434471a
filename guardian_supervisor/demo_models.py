"""Tiny, valid llama GGUF models with random weights, for demos and tests.

llama-server loads these in milliseconds on a CPU and serves them (with gibberish output),
which lets the whole stack be exercised with a real server and no downloads. The rules that
make a model load are in reference/llama-server.md section 5.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

# ChatML, plus a Hermes-style tools block: tool support is detected by the template
# mentioning `tools`, and llama-server's own parser recognises `<tool_call>`.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "<|im_start|>system\n"
    "{%- if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions. Function signatures within <tools></tools>:\n"
    "<tools>\n"
    "{%- for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "</tools>\n\nFor each function call, return a json object within <tool_call></tool_call> tags."
    "<|im_end|>\n"
    "{%- elif messages and messages[0]['role'] == 'system' %}"
    "<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "<|im_start|>assistant\n{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{%- for tc in message['tool_calls'] %}"
    "<tool_call>\n{\"name\": \"{{ tc['function']['name'] }}\", "
    "\"arguments\": {{ tc['function']['arguments'] | tojson }}}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{%- else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A few whole-word pieces so the SPM tokenizer has something besides byte fallback.
_NORMAL_PIECES = ["▁a", "▁the", "▁hello", "▁world", "▁is", "▁of", "a", "e", "o", "."]


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny llama model. Head dimension (n_embd / n_head) must be a multiple of 32,
    because quantized KV caches (q8_0, q4_0: block size 32) refuse anything else."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 4
    n_ff: int = 256
    n_ctx_train: int = 4096
    dtype: str = "f32"
    seed: int = 0
    name: str = "tiny"

    def __post_init__(self) -> None:
        if self.dtype not in ("f32", "f16"):
            raise ValueError(f"dtype must be 'f32' or 'f16', not {self.dtype!r}")
        if min(self.n_layer, self.n_embd, self.n_head, self.n_head_kv, self.n_ff, self.n_ctx_train) < 1:
            raise ValueError("all sizes must be positive")
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise ValueError("n_embd must divide by n_head, and n_head by n_head_kv")
        if self.head_dim % 32:
            raise ValueError(f"head dimension {self.head_dim} is not a multiple of 32")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """SPM vocab: <unk>,<s>,</s>, ChatML markers, all 256 byte tokens, a few normal pieces."""
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += _NORMAL_PIECES
    types += [gguf.TokenType.NORMAL] * len(_NORMAL_PIECES)
    # SPM merges greedily by score: longer pieces score higher so they win over bytes.
    scores = [0.0] * (len(tokens) - len(_NORMAL_PIECES)) + [float(-i) for i in range(len(_NORMAL_PIECES))]
    return tokens, scores, [int(t) for t in types]


def add_demo_vocab(w: gguf.GGUFWriter) -> int:
    """The demo models' SPM vocabulary and ChatML template; returns the vocabulary size."""
    tokens, scores, types = _vocab()
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)
    return len(tokens)


def write_gguf_atomic(path: Path, arch: str, fill: Callable[[gguf.GGUFWriter], None]) -> Path:
    """Write a GGUF via `fill(writer)` (metadata and tensors) to a temp file, synced, then
    rename it into place: a run that dies midway leaves no half-written model behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; models are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_tiny_llama(path: Path, spec: TinySpec) -> Path:
    """Write a random-weight llama model to `path` atomically (temp file + rename)."""
    n_vocab = len(_vocab()[0])
    rng = np.random.default_rng(spec.seed)
    wdtype = np.float32 if spec.dtype == "f32" else np.float16
    hd = spec.head_dim

    def mat(rows: int, cols: int) -> np.ndarray:
        # numpy (rows, cols) becomes ggml ne=[cols, rows]; small std keeps activations finite.
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(wdtype)

    def norm() -> np.ndarray:
        return np.ones(spec.n_embd, dtype=np.float32)  # 1-d tensors stay f32, as in real models

    def fill(w: gguf.GGUFWriter) -> None:
        w.add_name(spec.name)
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if spec.dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        w.add_block_count(spec.n_layer)
        w.add_context_length(spec.n_ctx_train)
        w.add_embedding_length(spec.n_embd)
        w.add_feed_forward_length(spec.n_ff)
        w.add_head_count(spec.n_head)
        w.add_head_count_kv(spec.n_head_kv)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_dimension_count(hd)  # must equal n_embd / n_head ("invalid n_rot" otherwise)
        w.add_rope_freq_base(10000.0)
        add_demo_vocab(w)

        w.add_tensor("token_embd.weight", mat(n_vocab, spec.n_embd))
        for i in range(spec.n_layer):
            p = f"blk.{i}."
            w.add_tensor(p + "attn_norm.weight", norm())
            w.add_tensor(p + "attn_q.weight", mat(spec.n_head * hd, spec.n_embd))
            w.add_tensor(p + "attn_k.weight", mat(spec.n_head_kv * hd, spec.n_embd))
            w.add_tensor(p + "attn_v.weight", mat(spec.n_head_kv * hd, spec.n_embd))
            w.add_tensor(p + "attn_output.weight", mat(spec.n_embd, spec.n_head * hd))
            w.add_tensor(p + "ffn_norm.weight", norm())
            w.add_tensor(p + "ffn_gate.weight", mat(spec.n_ff, spec.n_embd))
            w.add_tensor(p + "ffn_up.weight", mat(spec.n_ff, spec.n_embd))
            w.add_tensor(p + "ffn_down.weight", mat(spec.n_embd, spec.n_ff))
        w.add_tensor("output_norm.weight", norm())
        w.add_tensor("output.weight", mat(n_vocab, spec.n_embd))

    return write_gguf_atomic(path, "llama", fill)


# 'demo-a' is the small default; 'demo-b' is noticeably larger (for placement demos) and uses
# grouped-query attention so KV estimates exercise n_head_kv != n_head.
DEMO_MODELS: dict[str, TinySpec] = {
    "demo-a": TinySpec(name="demo-a", seed=1),
    "demo-b": TinySpec(
        name="demo-b", n_layer=4, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, dtype="f16", seed=2
    ),
}


def ensure_demo_models(models_dir: Path) -> list[Path]:
    """Write `<name>.gguf` for every demo model missing from `models_dir`; return all paths."""
    models_dir = Path(models_dir)
    paths = []
    for name, spec in DEMO_MODELS.items():
        path = models_dir / f"{name}.gguf"
        if not path.exists():
            write_tiny_llama(path, spec)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the tiny demo GGUF models into DIR.")
    parser.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    for path in ensure_demo_models(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
