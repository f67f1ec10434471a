"""Serve a generated family model on a real llama-server and read the buffers it printed.

One runner for every family's e2e file: the fork's flags for printing buffers, a request
that proves the model really runs, and a skip naming the fork's own words when it refuses
(or is known to abort on) a family.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from guardian_supervisor.memory.estimate import Measured, parse_buffer_lines
from guardian_supervisor.memory.gguf_info import read_model_info
from tests.e2e.test_estimate_vs_llama import LLAMA_SERVER, http, llama_server

ROOT = Path(__file__).resolve().parents[2]
IK_SERVER = ROOT / ".venv" / "bin" / "llama-server-ik"
ENCODERS = frozenset({"bert"})  # served with --embeddings, asked for an embedding


def server_for(fork: str) -> Path:
    """The fork's llama-server, or a skip saying how to install it."""
    binary = LLAMA_SERVER if fork == "upstream" else IK_SERVER
    if binary is None or not binary.exists():
        pytest.skip(f"{fork} llama-server not installed: run 'make install'")
    return binary


def error_line(log: str) -> str:
    """The line a server that refused a model printed about why (its first error line)."""
    hits = [ln for ln in log.splitlines() if "error" in ln.lower()]
    return hits[0].strip() if hits else log.strip().splitlines()[-1]


def serve_and_measure(
    model: Path,
    log: Path,
    fork: str,
    fam: str,
    *,
    ctx: int,
    kv: str,
    n_par: int = 1,
    unified: bool = False,
    ik_aborts: Mapping[str, str] | None = None,
) -> Measured:
    """Run `fam`'s model on `fork` at -c ctx, KV type kv, -np n_par; return its buffers.

    `ik_aborts` names families ik loads but aborts on, with why: those skip on its assert."""
    args = ["-c", str(ctx), "-np", str(n_par), "-ctk", kv, "-ctv", kv, "-fa", "on", "-t", "2"]
    if fork == "upstream":
        # -lv 4 prints the buffer lines; -fit off keeps -c; --no-repack keeps AMX copies out.
        args += ["-lv", "4", "-fit", "off", "--no-repack", "-kvu" if unified else "-no-kvu"]
    if fam in ENCODERS:
        args += ["--embeddings"]
    try:
        with llama_server(model, log, *args, binary=server_for(fork)) as url:
            if fam in ENCODERS:  # it really serves embeddings, one n_embd vector per input
                status, body = http(url + "/v1/embeddings", {"input": "hello world"})
                assert status == 200, body
                assert len(body["data"][0]["embedding"]) == read_model_info(model).n_embd
            else:  # a few tokens through every layer kind; the grammar keeps them whole
                # UTF-8 (ik answers 500 to a lone byte token of a random-weight model)
                req = {"prompt": "hello world", "n_predict": 4, "grammar": "root ::= [a-z ]+"}
                status, body = http(url + "/completion", req, timeout=60)
                assert status == 200 and body["tokens_predicted"] >= 1, body
    except pytest.fail.Exception:
        text = log.read_text(errors="replace")
        if fork == "ik" and "unknown model architecture" in text:
            pytest.skip(f"ik_llama.cpp does not load {fam}: {error_line(text)}")
        if fork == "ik" and ik_aborts and fam in ik_aborts and "GGML_ASSERT" in text:
            line = next(ln for ln in text.splitlines() if "GGML_ASSERT" in ln)
            pytest.skip(f"ik_llama.cpp aborts on {fam} ({ik_aborts[fam]}): {line.strip()}")
        raise
    measured = parse_buffer_lines(log.read_text(errors="replace").splitlines())
    assert measured.source == "buffers", log.read_text()[-3000:]
    return measured
