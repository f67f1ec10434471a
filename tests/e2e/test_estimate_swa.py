"""Sliding-window attention: the estimate against real llama-server on the real Gemma 3 270M.

Gemma 3 has 5 sliding-window layers (window 512) per global one. Upstream keeps only the
window plus a ubatch per stream for those layers; ik_llama.cpp keeps a full-size cache on
every layer. Both forks' printed buffers are compared with the estimate at two contexts and
two KV types (and upstream's -np 2, split and unified).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian_supervisor.memory.estimate import estimate, parse_buffer_lines
from guardian_supervisor.memory.gguf_info import read_model_info
from tests.e2e.test_estimate_vs_llama import LLAMA_SERVER, llama_server

ROOT = Path(__file__).resolve().parents[2]
GEMMA = ROOT / "data" / "models" / "gemma-3-270m-q4_k_m.gguf"
IK_SERVER = ROOT / ".venv" / "bin" / "llama-server-ik"

pytestmark = pytest.mark.skipif(not GEMMA.exists(), reason=f"{GEMMA} missing: run 'make models'")

# (fork, ctx, kv type, -np, unified KV)
COMBOS = [
    ("upstream", 4096, "f16", 1, False),
    ("upstream", 16384, "f16", 1, False),
    ("upstream", 4096, "q8_0", 1, False),
    ("upstream", 16384, "q8_0", 1, False),
    ("upstream", 8192, "f16", 2, False),
    ("upstream", 8192, "f16", 2, True),
    ("ik", 4096, "f16", 1, False),
    ("ik", 16384, "f16", 1, False),
    ("ik", 4096, "q8_0", 1, False),
    ("ik", 16384, "q8_0", 1, False),
]


@pytest.mark.parametrize(("fork", "ctx", "kv", "n_par", "unified"), COMBOS)
def test_gemma3_swa_estimate_within_5_percent(
    tmp_path: Path, fork: str, ctx: int, kv: str, n_par: int, unified: bool
) -> None:
    binary = LLAMA_SERVER if fork == "upstream" else IK_SERVER
    if binary is None or not binary.exists():
        pytest.skip(f"{fork} llama-server not installed: run 'make install'")
    log = tmp_path / "llama.log"
    args = ["-c", str(ctx), "-np", str(n_par), "-ctk", kv, "-ctv", kv, "-fa", "on", "-t", "2"]
    if fork == "upstream":
        # -lv 4 prints the buffer lines; --no-repack keeps AMX/AVX repacked copies of the
        # Q4_K weights (a host-only extra, ~5 % here) out of the comparison; -fit off keeps -c.
        args += ["-lv", "4", "-fit", "off", "--no-repack", "-kvu" if unified else "-no-kvu"]
    with llama_server(GEMMA, log, *args, binary=binary):
        pass
    measured = parse_buffer_lines(log.read_text(errors="replace").splitlines())
    assert measured.source == "buffers", log.read_text()[-3000:]

    est = estimate(
        read_model_info(GEMMA),
        ctx=ctx,
        kv_type=kv,
        n_parallel=n_par,
        kv_unified=unified,
        gpu=False,
        flavor=fork,
    )
    detail = f"estimate {est.to_dict()} vs measured {measured}"
    assert abs(est.kv_bytes / measured.kv_bytes - 1) <= 0.05, detail
    assert abs(est.total_bytes / measured.total_bytes - 1) <= 0.05, detail


# (fork, ubatch, flash attention): the compute buffer grows with the ubatch (-ub, -b >= it)
UBATCH = [
    (fork, ub, fa) for fork in ("upstream", "ik") for ub, fa in ((128, True), (2048, True), (1024, False))
]


@pytest.mark.parametrize(("fork", "ub", "fa"), UBATCH)
def test_gemma3_compute_follows_the_ubatch(tmp_path: Path, fork: str, ub: int, fa: bool) -> None:
    binary = LLAMA_SERVER if fork == "upstream" else IK_SERVER
    if binary is None or not binary.exists():
        pytest.skip(f"{fork} llama-server not installed: run 'make install'")
    log = tmp_path / "llama.log"
    ctx, batch = 8192, max(ub, 2048)
    args = [
        "-c",
        str(ctx),
        "-np",
        "1",
        "-fa",
        "on" if fa else "off",
        "-t",
        "2",
        "-b",
        str(batch),
        "-ub",
        str(ub),
    ]
    if fork == "upstream":
        args += ["-lv", "4", "-fit", "off", "--no-repack", "-no-kvu"]
    with llama_server(GEMMA, log, *args, binary=binary):
        pass
    measured = parse_buffer_lines(log.read_text(errors="replace").splitlines())
    assert measured.source == "buffers", log.read_text()[-3000:]
    est = estimate(
        read_model_info(GEMMA), ctx=ctx, n_batch=batch, n_ubatch=ub, flash_attn=fa, gpu=False, flavor=fork
    )
    detail = f"estimate {est.to_dict()} vs measured {measured}"
    assert abs(est.total_bytes / measured.total_bytes - 1) <= 0.05, detail
    if fa:  # measured exact with flash attention; without it upstream's KQ peak is ~10 % over
        assert abs(est.compute_bytes / measured.compute_bytes - 1) <= 0.02, detail
