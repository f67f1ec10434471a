"""The GPU inventory: an effect behind one small interface, `GpuSource.snapshot()`.

Three sources: NVML (real NVIDIA GPUs), a simulation from settings (machines without
NVIDIA GPUs, tests), and CPU mode (no GPUs; system RAM is the budget). Every NVML and
psutil call runs in a worker thread so the event loop never blocks on the driver.

Index convention: `GpuInfo.index` is NVML's index, which follows PCI bus order. CUDA's
default order is "fastest first", so whoever starts llama-server must set
`CUDA_DEVICE_ORDER=PCI_BUS_ID` for these indices to mean the same devices there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psutil
import pynvml

from shared.errors import Code, GuardianError

log = logging.getLogger(__name__)

MiB = 1 << 20

Mode = Literal["nvml", "simulated", "cpu"]


class GpuError(GuardianError):
    """A GPU inventory problem: NVML unusable (UNAVAILABLE) or bad GPU settings (CONFIG_INVALID)."""

    def __init__(self, message: str, code: Code = Code.UNAVAILABLE) -> None:
        super().__init__(code, message)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU at one moment. `other_bytes` is memory held by processes that are not Guardian's."""

    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    other_bytes: int
    uuid: str | None = None


@dataclass(frozen=True)
class Inventory:
    """A snapshot of every GPU plus system RAM. `taken_at` is wall-clock (time.time())."""

    gpus: tuple[GpuInfo, ...]
    mode: Mode
    cpu_total_bytes: int
    cpu_available_bytes: int
    taken_at: float

    def gpu(self, index: int) -> GpuInfo:
        """The GPU with NVML index `index`; KeyError if this snapshot has none."""
        for g in self.gpus:
            if g.index == index:
                return g
        raise KeyError(index)


class GpuSource(Protocol):
    """Anything that can take an inventory snapshot."""

    async def snapshot(
        self, own_pids: Collection[int] = (), own_usage: Mapping[int, int] | None = None
    ) -> Inventory:
        """Take (or reuse a very recent) snapshot.

        own_pids: Guardian's llama-server pids; their memory (and their children's) is not
        counted in `other_bytes`. own_usage: bytes Guardian believes its resident models
        hold per GPU index; a simulation needs it to compute `free_bytes`, NVML uses it only
        as a fallback when the driver does not report per-process memory.
        """
        ...


def _ram() -> tuple[int, int]:
    """(total, available) system RAM. Blocking: call in a thread."""
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


# ---------------------------------------------------------------- NVML


@dataclass(frozen=True)
class _RawGpu:
    """What NVML said about one GPU, before attributing memory to Guardian or others."""

    index: int
    name: str
    uuid: str | None
    total: int
    used: int
    free: int
    procs: tuple[tuple[int, int | None], ...]  # (pid, bytes or None when the driver won't say)
    procs_known: bool  # False when the process list itself could not be read


@dataclass(frozen=True)
class _RawReading:
    gpus: tuple[_RawGpu, ...]
    ram_total: int
    ram_available: int
    taken_at: float


def _text(value: str | bytes) -> str:
    # Old nvidia-ml-py versions return bytes, newer ones str.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _nvml_probe() -> str | None:
    """None when NVML initialises and sees at least one GPU, else why not. Blocking."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return f"NVML could not be initialised: {e} (is the NVIDIA driver installed and loaded?)"
    except OSError as e:  # the shared library exists but cannot be loaded
        return f"NVML could not be loaded: {e}"
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as e:
        return f"NVML initialised but could not count GPUs: {e}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    return None if count > 0 else "NVML initialised but reports no GPUs"


def _processes(handle: Any) -> tuple[tuple[tuple[int, int | None], ...], bool]:
    """Compute + graphics processes on one GPU, deduplicated by pid. Blocking."""
    found: dict[int, int | None] = {}
    try:
        lists = [
            pynvml.nvmlDeviceGetComputeRunningProcesses(handle),
            pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle),
        ]
    except pynvml.NVMLError as e:
        log.debug("NVML process list unavailable: %s", e)
        return (), False
    for procs in lists:
        for p in procs:
            pid, used = int(p.pid), p.usedGpuMemory
            used = None if used is None else int(used)
            prev = found.get(pid)
            # A pid listed as both compute and graphics holds one allocation: keep the larger.
            found[pid] = used if prev is None else max(prev, used or 0)
    return tuple(found.items()), True


def _read_nvml() -> _RawReading:
    """Read every GPU through NVML. Blocking; nvmlInit must have succeeded."""
    gpus: list[_RawGpu] = []
    for i in range(int(pynvml.nvmlDeviceGetCount())):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        try:
            uuid: str | None = _text(pynvml.nvmlDeviceGetUUID(h))
        except pynvml.NVMLError:
            uuid = None
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        procs, known = _processes(h)
        gpus.append(
            _RawGpu(
                index=i,
                name=_text(pynvml.nvmlDeviceGetName(h)),
                uuid=uuid,
                total=int(mem.total),
                used=int(mem.used),
                free=int(mem.free),
                procs=procs,
                procs_known=known,
            )
        )
    total, available = _ram()
    return _RawReading(tuple(gpus), total, available, time.time())


def _is_ours(pid: int, own: Collection[int]) -> bool:
    """True if pid is one of Guardian's processes or a descendant of one. Blocking."""
    if pid in own:
        return True
    try:
        return any(parent.pid in own for parent in psutil.Process(pid).parents())
    except psutil.Error:  # gone, or another user's process we may not inspect
        return False


def _other_bytes(raw: _RawGpu, own_pids: Collection[int], own_usage: int) -> int:
    """Memory on this GPU held by processes that are not Guardian's. Blocking (psutil)."""
    known_other = own_known = 0
    unknown_other = not raw.procs_known
    for pid, used in raw.procs:
        ours = bool(own_pids) and _is_ours(pid, own_pids)
        if used is None:
            unknown_other = unknown_other or not ours
        elif ours:
            own_known += used
        else:
            known_other += used
    if not unknown_other:
        return known_other
    # The driver will not say what some foreign process holds (WDDM, some containers):
    # count everything used except what we know, or believe, is ours.
    own = max(own_known, own_usage)
    return max(known_other, raw.used - own, 0)


def _build_inventory(raw: _RawReading, own_pids: Collection[int], own_usage: Mapping[int, int]) -> Inventory:
    """Attribute each GPU's memory to Guardian or others. Blocking (psutil)."""
    gpus = tuple(
        GpuInfo(
            index=g.index,
            name=g.name,
            total_bytes=g.total,
            used_bytes=g.used,
            free_bytes=g.free,
            other_bytes=_other_bytes(g, own_pids, own_usage.get(g.index, 0)),
            uuid=g.uuid,
        )
        for g in raw.gpus
    )
    return Inventory(gpus, "nvml", raw.ram_total, raw.ram_available, raw.taken_at)


class NvmlSource:
    """Real NVIDIA GPUs through NVML. Readings are cached for `cache_s` seconds so that many
    callers at once cost one driver round-trip; attribution to own pids is per call."""

    def __init__(self, cache_s: float = 0.5) -> None:
        self._cache_s = cache_s
        self._lock = asyncio.Lock()
        self._initialised = False
        self._reading: _RawReading | None = None
        self._read_at = float("-inf")  # monotonic time of the cached reading

    @staticmethod
    def available() -> bool:
        """True if NVML initialises and sees at least one GPU. Blocking: call it at startup
        before the event loop runs, or through asyncio.to_thread."""
        return _nvml_probe() is None

    async def _reading_now(self) -> _RawReading:
        async with self._lock:  # concurrent callers share one refresh
            if self._reading is not None and time.monotonic() - self._read_at < self._cache_s:
                return self._reading
            try:
                if not self._initialised:
                    await asyncio.to_thread(pynvml.nvmlInit)
                    self._initialised = True
                reading = await asyncio.to_thread(_read_nvml)
            except pynvml.NVMLError as e:
                raise GpuError(f"NVML query failed: {e}") from e
            self._reading, self._read_at = reading, time.monotonic()
            return reading

    async def snapshot(
        self, own_pids: Collection[int] = (), own_usage: Mapping[int, int] | None = None
    ) -> Inventory:
        """See GpuSource.snapshot."""
        reading = await self._reading_now()
        return await asyncio.to_thread(_build_inventory, reading, frozenset(own_pids), own_usage or {})

    async def close(self) -> None:
        """Release NVML (it is reference-counted); the source re-initialises if used again."""
        async with self._lock:
            if self._initialised:
                self._initialised = False
                self._reading = None
                try:
                    await asyncio.to_thread(pynvml.nvmlShutdown)
                except pynvml.NVMLError as e:
                    log.debug("nvmlShutdown failed: %s", e)


# ---------------------------------------------------------------- simulation and CPU


@dataclass(frozen=True)
class _SimGpu:
    name: str
    total: int
    other: int
    uuid: str | None


_SIM_KEYS = frozenset({"name", "total_mb", "used_mb", "uuid"})


def _sim_gpu(i: int, spec: Mapping[str, Any]) -> _SimGpu:
    """Validate one simulated GPU's settings; errors name the entry and the key."""
    where = f"simulated GPU #{i}"
    unknown = set(spec) - _SIM_KEYS
    if unknown:
        raise GpuError(
            f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(_SIM_KEYS)}", Code.CONFIG_INVALID
        )
    total_mb, used_mb = spec.get("total_mb"), spec.get("used_mb", 0)
    if not isinstance(total_mb, int | float) or isinstance(total_mb, bool) or total_mb <= 0:
        raise GpuError(f"{where}: total_mb must be a positive number, got {total_mb!r}", Code.CONFIG_INVALID)
    if not isinstance(used_mb, int | float) or isinstance(used_mb, bool) or not 0 <= used_mb <= total_mb:
        raise GpuError(
            f"{where}: used_mb must be between 0 and total_mb ({total_mb}), got {used_mb!r}",
            Code.CONFIG_INVALID,
        )
    uuid = spec.get("uuid")
    return _SimGpu(
        name=str(spec.get("name") or f"Simulated GPU {i}"),
        total=int(total_mb * MiB),
        other=int(used_mb * MiB),
        uuid=None if uuid is None else str(uuid),
    )


class SimulatedSource:
    """GPUs described by settings, e.g. [{name: 'RTX 3060', total_mb: 12288},
    {name: 'RTX 5060 Ti', total_mb: 16384, used_mb: 1536}] where used_mb is memory held by
    other processes. A simulation cannot see Guardian's own models, so free memory is
    total - used_by_others - own_usage[index] (own_usage as passed to snapshot)."""

    def __init__(
        self,
        specs: Sequence[Mapping[str, Any]],
        *,
        cpu_total_bytes: int | None = None,
        cpu_available_bytes: int | None = None,
    ) -> None:
        if not specs:
            raise GpuError("gpu mode 'simulated' needs at least one simulated GPU", Code.CONFIG_INVALID)
        self._gpus = [_sim_gpu(i, s) for i, s in enumerate(specs)]
        # RAM figures can be pinned for deterministic tests; otherwise they are real.
        self._ram_override = (cpu_total_bytes, cpu_available_bytes)

    def set_other_bytes(self, index: int, other_bytes: int) -> None:
        """Change what other processes hold on one GPU (tests: Frigate grows or quits)."""
        g = self._gpus[index]
        self._gpus[index] = _SimGpu(g.name, g.total, max(0, min(other_bytes, g.total)), g.uuid)

    async def snapshot(
        self, own_pids: Collection[int] = (), own_usage: Mapping[int, int] | None = None
    ) -> Inventory:
        """See GpuSource.snapshot; own_pids is irrelevant to a simulation."""
        usage = own_usage or {}
        gpus = []
        for i, g in enumerate(self._gpus):
            used = min(g.total, g.other + max(0, usage.get(i, 0)))
            gpus.append(GpuInfo(i, g.name, g.total, used, g.total - used, g.other, g.uuid))
        total, available = self._ram_override
        if total is None or available is None:
            real_total, real_available = await asyncio.to_thread(_ram)
            total = real_total if total is None else total
            available = real_available if available is None else available
        return Inventory(tuple(gpus), "simulated", total, available, time.time())


class CpuSource:
    """No GPUs: models run on the CPU and system RAM is the budget."""

    async def snapshot(
        self, own_pids: Collection[int] = (), own_usage: Mapping[int, int] | None = None
    ) -> Inventory:
        """See GpuSource.snapshot; RAM 'available' already excludes resident models."""
        total, available = await asyncio.to_thread(_ram)
        return Inventory((), "cpu", total, available, time.time())


# ---------------------------------------------------------------- choosing and waiting


def make_source(mode: str, simulated: Sequence[Mapping[str, Any]] = ()) -> GpuSource:
    """The source for settings' gpu mode: 'auto' (NVML if usable, else CPU), 'nvml' (NVML or
    a GpuError saying why not), 'simulated' (from `simulated`), 'none'/'cpu' (CPU mode).

    Probes NVML synchronously: call it at startup or through asyncio.to_thread.
    """
    if mode == "auto":
        why = _nvml_probe()
        if why is None:
            return NvmlSource()
        log.info("no usable NVIDIA GPU (%s); running in CPU mode", why)
        return CpuSource()
    if mode == "nvml":
        why = _nvml_probe()
        if why is not None:
            raise GpuError(f"gpu mode 'nvml' was requested but {why}")
        return NvmlSource()
    if mode == "simulated":
        return SimulatedSource(simulated)
    if mode in ("none", "cpu"):
        return CpuSource()
    raise GpuError(
        f"unknown gpu mode {mode!r}; expected one of 'auto', 'nvml', 'simulated', 'none'",
        Code.CONFIG_INVALID,
    )


def recovery_target(
    baseline: Inventory, gpu_indices: Collection[int], held_bytes: int, fraction: float = 0.75
) -> int:
    """Ollama's rule as an absolute figure for wait_for_release: the free bytes on
    `gpu_indices` in `baseline` (taken before the stop) plus `fraction` of what the stopped
    model held there."""
    before = sum(g.free_bytes for g in baseline.gpus if g.index in gpu_indices)
    return before + int(held_bytes * fraction)


async def wait_for_release(
    source: GpuSource,
    gpu_indices: Collection[int],
    expect_free_bytes: int,
    timeout_s: float = 5.0,
    poll_s: float = 0.25,
    *,
    own_pids: Collection[int] = (),
    own_usage: Mapping[int, int] | None = None,
) -> bool:
    """After a model stops, the driver's free-memory figure lags. Poll until the free bytes
    summed over `gpu_indices` reach `expect_free_bytes`, for at most `timeout_s`.

    Returns True when reached, False on timeout (the caller re-plans from a fresh snapshot
    either way; the wait only avoids deciding on stale numbers). See recovery_target for
    Ollama's "75% of what the model held" target.
    """
    wanted = set(gpu_indices)
    if not wanted:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        inv = await source.snapshot(own_pids, own_usage)
        free = sum(g.free_bytes for g in inv.gpus if g.index in wanted)
        if free >= expect_free_bytes:
            return True
        left = deadline - loop.time()
        if left <= 0:
            log.info(
                "GPU memory not released in %.1fs: %d MiB free on %s, expected %d MiB",
                timeout_s,
                free // MiB,
                sorted(wanted),
                expect_free_bytes // MiB,
            )
            return False
        await asyncio.sleep(min(poll_s, left))
