"""gguf_info: header reading with gguf-py and with the tolerant fallback parser."""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from guardian_supervisor.demo_models import DEMO_MODELS, TinySpec, ensure_demo_models, write_tiny_llama
from guardian_supervisor.memory import gguf_info
from guardian_supervisor.memory.gguf_info import GGUFError, file_digest, human_number, read_model_info

N_VOCAB = 3 + 2 + 256 + 10  # <unk> <s> </s>, ChatML markers, bytes, normal pieces


def expected_layer_bytes(spec: TinySpec) -> int:
    w = 4 if spec.dtype == "f32" else 2
    hd = spec.head_dim
    mats = (
        spec.n_embd * spec.n_head * hd * 2  # q, output
        + spec.n_embd * spec.n_head_kv * hd * 2  # k, v
        + spec.n_embd * spec.n_ff * 3  # gate, up, down
    )
    return mats * w + 2 * spec.n_embd * 4  # two f32 norms


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {p.stem: p for p in ensure_demo_models(d)}


def test_reads_demo_a(models: dict[str, Path]) -> None:
    spec = DEMO_MODELS["demo-a"]
    info = read_model_info(models["demo-a"])
    assert info.reader == "native"
    assert info.architecture == "llama"
    assert info.name == "demo-a"
    assert info.file_size == models["demo-a"].stat().st_size
    assert (info.n_layer, info.n_embd, info.n_head, info.n_ff) == (2, 128, 4, spec.n_ff)
    assert info.n_head_kv == [4, 4]
    assert info.key_length == info.value_length == 32
    assert info.n_ctx_train == 4096
    assert info.n_vocab == N_VOCAB
    assert info.file_type == info.quantization_level == "F32"
    assert info.layer_bytes == [expected_layer_bytes(spec)] * 2
    embd = N_VOCAB * spec.n_embd * 4
    assert info.nonrepeating_bytes == 2 * embd + spec.n_embd * 4  # token_embd, output, output_norm
    assert info.tensor_bytes("token_embd.weight") == embd
    assert info.weights_bytes == sum(t.n_bytes for t in info.tensors)
    assert info.parameter_count == sum(t.n_elements for t in info.tensors)
    assert info.chat_template and info.chat_template.startswith("{%- if tools %}")
    assert info.has_tool_template


def test_reads_demo_b_gqa_f16(models: dict[str, Path]) -> None:
    info = read_model_info(models["demo-b"])
    assert info.file_type == "F16"
    assert info.n_layer == 4 and info.n_head_kv == [2, 2, 2, 2]
    assert info.key_length == 64
    assert info.layer_bytes == [expected_layer_bytes(DEMO_MODELS["demo-b"])] * 4
    # demo-b is the noticeably larger one
    assert info.file_size > 2 * read_model_info(models["demo-a"]).file_size


def test_metadata_for_show(models: dict[str, Path]) -> None:
    info = read_model_info(models["demo-a"])
    assert info.metadata["tokenizer.ggml.tokens"] == []
    short = info.metadata_for_show(verbose=False)
    assert short["tokenizer.ggml.tokens"] == [] and short["tokenizer.ggml.scores"] == []
    assert short["llama.block_count"] == 2
    assert short["general.parameter_count"] == info.parameter_count
    full = info.metadata_for_show(verbose=True)  # re-reads the arrays from the file
    assert len(full["tokenizer.ggml.tokens"]) == N_VOCAB
    assert full["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    kept = read_model_info(models["demo-a"], keep_arrays=True)
    assert kept.arrays_kept and len(kept.metadata["tokenizer.ggml.token_type"]) == N_VOCAB


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (7_615_616_512, "7.6B"),
        (8_000_000_000, "8B"),
        (494_032_768, "494.03M"),
        (1_200_000, "1.20M"),
        (2_000_000, "2M"),
        (397_696, "398K"),
        (999, "999"),
    ],
)
def test_human_number_matches_ollama(n: int, text: str) -> None:
    assert human_number(n) == text


def test_file_digest_is_identity_not_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"GGUF" + b"x" * 100)
    b.write_bytes(b"GGUF" + b"x" * 100)
    da = file_digest(a)
    assert len(da) == 64 and int(da, 16) >= 0
    assert file_digest(a) == da
    assert file_digest(b) != da  # same content, different file
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert file_digest(a) != da


def _tensor_type_offset(path: Path, name: str) -> int:
    """File offset of a tensor-info's uint32 type field (found via gguf-py's field parts)."""
    reader = gguf.GGUFReader(path)
    t = next(t for t in reader.tensors if t.name == name)
    # tensor-info field: name length (u64), name, n_dims (u32), dims (u64 each), type (u32), offset
    return t.field.offset + 8 + len(name.encode()) + 4 + 8 * len(t.shape)


@pytest.mark.parametrize("victim", ["blk.0.ffn_up.weight", "output.weight"])
def test_fallback_parser_handles_unknown_tensor_type(tmp_path: Path, victim: str) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", TinySpec())
    before = read_model_info(path)
    off = _tensor_type_offset(path, victim)
    with open(path, "r+b") as f:
        f.seek(off)
        assert struct.unpack("<I", f.read(4))[0] == 0  # F32
        f.seek(off)
        f.write(struct.pack("<I", 139))  # ik_llama.cpp IQ4_K, unknown to gguf-py
    with pytest.raises(ValueError):
        gguf.GGUFReader(path)  # the reason the fallback exists
    info = read_model_info(path, prefer_gguf_py=True)
    assert info.reader == "native"  # gguf-py failed, the native parser took over
    assert read_model_info(path) == info
    t = next(t for t in info.tensors if t.name == victim)
    assert t.type_name == "IQ4_K" and t.type_id == 139
    # size from the gap to the next tensor (or end of file): the real bytes plus alignment padding
    true_bytes = before.tensor_bytes(victim)
    assert true_bytes <= t.n_bytes < true_bytes + 32
    assert (info.n_layer, info.n_embd, info.n_head_kv, info.n_vocab) == (
        before.n_layer,
        before.n_embd,
        before.n_head_kv,
        before.n_vocab,
    )
    assert info.file_type == "F32"  # from general.file_type
    assert info.chat_template == before.chat_template
    assert abs(info.weights_bytes - before.weights_bytes) < 32


@pytest.mark.parametrize("keep_arrays", [False, True])
def test_native_parser_agrees_with_gguf_py(tmp_path: Path, keep_arrays: bool) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", TinySpec(dtype="f16", n_head_kv=2))
    via_gguf_py = read_model_info(path, keep_arrays=keep_arrays, prefer_gguf_py=True)
    native = read_model_info(path, keep_arrays=keep_arrays)
    assert (via_gguf_py.reader, native.reader) == ("gguf-py", "native")
    assert dataclasses.replace(native, reader="gguf-py") == via_gguf_py
    with open(path, "rb") as f:
        raw = gguf_info._parse_header(f, path, path.stat().st_size, keep_arrays=True)
    assert raw.data_start == gguf.GGUFReader(path).data_offset


def _write_custom(path: Path, *, file_type: int | None, kv_heads: list[int] | int) -> Path:
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(kv_heads)
    w.add_feed_forward_length(128)
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_tensor("token_embd.weight", np.zeros((10, 64), dtype=np.float16))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((64, 64), dtype=np.float16))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.zeros(64, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.zeros(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_file_type_names_and_per_layer_heads(tmp_path: Path) -> None:
    ik = read_model_info(_write_custom(tmp_path / "ik.gguf", file_type=140, kv_heads=[2, 1]))
    assert ik.file_type == "IQ4_K"  # ik_llama.cpp LLAMA_FTYPE_MOSTLY_IQ4_K
    assert ik.n_head_kv == [2, 1]
    assert ik.name == "ik"  # no general.name: the file stem
    assert ik.n_vocab == 10  # no vocab: token_embd's second dimension
    assert ik.chat_template is None and not ik.has_tool_template
    qkm = read_model_info(_write_custom(tmp_path / "q.gguf", file_type=15, kv_heads=1))
    assert qkm.file_type == "Q4_K_M"
    none = read_model_info(_write_custom(tmp_path / "n.gguf", file_type=None, kv_heads=1))
    assert none.file_type == "F16"  # most bytes are f16


def test_vocab_size_from_token_list(tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_token_list([f"t{i}" for i in range(50)])
    w.add_tensor("token_embd.weight", np.zeros((50, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_model_info(path)
    assert info.n_vocab == 50 and info.metadata["tokenizer.ggml.tokens"] == []
    assert info.n_head_kv == [0] and info.key_length == 0  # no attention keys: zeros, no crash
    assert info.file_type == "F32" and info.layer_bytes == [0]


def test_ensure_demo_models_writes_once(tmp_path: Path) -> None:
    paths = ensure_demo_models(tmp_path)
    assert [p.name for p in paths] == [f"{n}.gguf" for n in DEMO_MODELS]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert ensure_demo_models(tmp_path) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # present files are left alone


def test_tiny_spec_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        TinySpec(n_embd=64, n_head=4)  # head dim 16: quantized KV caches would refuse it
    with pytest.raises(ValueError, match="dtype"):
        TinySpec(dtype="q4_0")
    with pytest.raises(ValueError):
        TinySpec(n_head=4, n_head_kv=3)


def test_not_gguf_empty_missing(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello world, not a model")
    with pytest.raises(GGUFError, match="not a GGUF file") as e:
        read_model_info(text)
    assert e.value.path == text
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_model_info(empty)
    with pytest.raises(GGUFError, match="cannot read"):
        read_model_info(tmp_path / "missing.gguf")


@pytest.mark.parametrize("keep", [40, 2000, 0.6])
def test_truncated_files_raise(tmp_path: Path, keep: float) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", TinySpec())
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    path.write_bytes(data[:n])
    with pytest.raises(GGUFError, match="truncated"):
        read_model_info(path)


def test_garbage_after_magic_raises_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\xff" * 64)
    with pytest.raises(GGUFError):
        read_model_info(path)
