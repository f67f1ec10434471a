"""Serve a generated family model on a real llama-server and read the buffers it printed.

One runner for every family's e2e file: the fork's flags for printing buffers, a request
that proves the model really runs, and a skip naming the fork's own words when it refuses
(or is known to abort on) a family.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from guardian_supervisor.memory.estimate import MIB, Estimate, Measured, estimate, parse_buffer_lines
from guardian_supervisor.memory.fitparams import FitParams, LaunchKnobs, projection_of
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


def check_fit_params(model: Path, fam: str, tmp_path: Path, *, ctx: int, kv: str, fit_binary: str) -> None:
    """llama.cpp's own projection (llama-fit-params) against what upstream allocated, beside
    the estimator's error. The tool prints whole MiB, truncated: each of its three columns
    may be up to 1 MiB short, which on models this small is several per cent. Its context
    column holds every cache (full, windowed) and the recurrent state."""
    knobs = LaunchKnobs(ctx=ctx, n_parallel=1, kv_type=kv, flash_attn="on")
    rec = asyncio.run(FitParams(tmp_path / "fitparams.json", fit_binary).project(model, knobs))
    info = read_model_info(model)
    est = estimate(info, ctx=ctx, kv_type=kv, gpu=False)
    proj = projection_of(rec, n_vocab=info.n_vocab, knobs=knobs, cells=est.ctx, floor_compute=0)
    measured = serve_and_measure(model, tmp_path / "llama.log", "upstream", fam, ctx=ctx, kv=kv)
    projected = proj.total_bytes + est.output_bytes
    print(
        f"\n{fam} ctx {ctx} {kv}: fit-params {projected / MIB:.2f} MiB (KV+state {proj.kv_bytes / MIB:.0f}, "
        f"compute {proj.raw_compute_bytes / MIB:.0f}) {100 * (projected / measured.total_bytes - 1):+.1f} %, "
        f"estimator {100 * (est.total_bytes / measured.total_bytes - 1):+.1f} %, measured "
        f"{measured.total_bytes / MIB:.2f} MiB (KV+state {measured.kv_bytes / MIB:.2f})"
    )
    assert 0 <= measured.kv_bytes - proj.kv_bytes < MIB
    assert 0 <= measured.total_bytes - projected < 3 * MIB
    assert abs(est.total_bytes / measured.total_bytes - 1) <= 0.05


def compare(label: str, est: Estimate, measured: Measured) -> str:
    """Print the estimate beside the printed buffers (pytest -s shows the figures the README
    quotes); return the detail an assertion shows."""
    print(
        f"\n{label}: estimate {est.total_bytes / MIB:.2f} MiB (KV+state {est.kv_bytes / MIB:.2f}, "
        f"compute {est.compute_bytes / MIB:.2f}) vs measured {measured.total_bytes / MIB:.2f} MiB "
        f"(KV+state {measured.kv_bytes / MIB:.2f}, compute {measured.compute_bytes / MIB:.2f}): "
        f"KV {100 * (est.kv_bytes / measured.kv_bytes - 1) if measured.kv_bytes else 0:+.1f} %, "
        f"total {100 * (est.total_bytes / measured.total_bytes - 1):+.1f} %"
    )
    return f"estimate {est.to_dict()} vs measured {measured}"
