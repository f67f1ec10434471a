"""GPU inventory sources: simulation arithmetic, CPU mode, NVML attribution (with a fake
pynvml), source selection on this driverless machine, and waiting for memory to return."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection, Mapping
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from guardian_supervisor.memory.gpus import (
    CpuSource,
    GpuError,
    GpuInfo,
    Inventory,
    NvmlSource,
    SimulatedSource,
    make_source,
    recovery_target,
    wait_for_release,
)
from shared.errors import Code

MiB = 1 << 20
GiB = 1 << 30

BRIEF = [{"name": "RTX 3060", "total_mb": 12288}, {"name": "RTX 5060 Ti", "total_mb": 16384, "used_mb": 1536}]

HAVE_NVML = NvmlSource.available()


# ---------------------------------------------------------------- simulation


async def test_simulated_brief_rig_without_own_models() -> None:
    inv = await SimulatedSource(BRIEF, cpu_total_bytes=64 * GiB, cpu_available_bytes=40 * GiB).snapshot()
    assert inv.mode == "simulated"
    assert [g.name for g in inv.gpus] == ["RTX 3060", "RTX 5060 Ti"]
    g0, g1 = inv.gpus
    assert (g0.index, g0.total_bytes, g0.used_bytes, g0.free_bytes, g0.other_bytes) == (
        0,
        12 * GiB,
        0,
        12 * GiB,
        0,
    )
    assert g1.other_bytes == 1536 * MiB
    assert g1.used_bytes == 1536 * MiB
    assert g1.free_bytes == 16 * GiB - 1536 * MiB
    assert (inv.cpu_total_bytes, inv.cpu_available_bytes) == (64 * GiB, 40 * GiB)
    assert inv.gpu(1) is g1


async def test_simulated_counts_own_usage_as_used_not_other() -> None:
    src = SimulatedSource(BRIEF)
    inv = await src.snapshot(own_pids=[123], own_usage={0: 5 * GiB, 1: 2 * GiB})
    g0, g1 = inv.gpus
    assert (g0.used_bytes, g0.free_bytes, g0.other_bytes) == (5 * GiB, 7 * GiB, 0)
    assert g1.used_bytes == 2 * GiB + 1536 * MiB
    assert g1.free_bytes == 16 * GiB - 2 * GiB - 1536 * MiB
    assert g1.other_bytes == 1536 * MiB
    # Guardian claiming more than the card holds clamps at zero free, never negative.
    inv = await src.snapshot(own_usage={0: 20 * GiB})
    assert inv.gpus[0].free_bytes == 0
    # Real RAM figures when none are pinned.
    assert inv.cpu_total_bytes > 0


async def test_simulated_other_bytes_can_change() -> None:
    src = SimulatedSource(BRIEF)
    src.set_other_bytes(1, 3 * GiB)
    inv = await src.snapshot()
    assert inv.gpus[1].other_bytes == 3 * GiB
    assert inv.gpus[1].free_bytes == 13 * GiB


@pytest.mark.parametrize(
    ("specs", "fragment"),
    [
        ([], "at least one"),
        ([{"name": "x"}], "total_mb"),
        ([{"total_mb": -1}], "total_mb"),
        ([{"total_mb": 100, "used_mb": 200}], "used_mb"),
        ([{"total_mb": 100, "vram": 3}], "unknown key"),
    ],
)
def test_simulated_rejects_bad_settings(specs: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(GpuError) as e:
        SimulatedSource(specs)
    assert fragment in e.value.message
    assert e.value.code is Code.CONFIG_INVALID


def test_simulated_default_name() -> None:
    inv = asyncio.run(SimulatedSource([{"total_mb": 1024}]).snapshot())
    assert inv.gpus[0].name == "Simulated GPU 0"


# ---------------------------------------------------------------- CPU and selection


async def test_cpu_source_reports_sane_ram() -> None:
    inv = await CpuSource().snapshot()
    assert inv.mode == "cpu"
    assert inv.gpus == ()
    assert inv.cpu_total_bytes > 64 * MiB
    assert 0 < inv.cpu_available_bytes <= inv.cpu_total_bytes
    assert inv.taken_at > 0


@pytest.mark.skipif(HAVE_NVML, reason="this machine has a usable NVIDIA driver")
def test_auto_falls_back_to_cpu_without_driver() -> None:
    assert isinstance(make_source("auto", BRIEF), CpuSource)


@pytest.mark.skipif(HAVE_NVML, reason="this machine has a usable NVIDIA driver")
def test_nvml_mode_without_driver_is_a_clear_error() -> None:
    with pytest.raises(GpuError) as e:
        make_source("nvml", [])
    assert "'nvml'" in e.value.message
    assert "NVML" in e.value.message
    assert e.value.code is Code.UNAVAILABLE


def test_make_source_other_modes() -> None:
    assert isinstance(make_source("simulated", BRIEF), SimulatedSource)
    assert isinstance(make_source("none", []), CpuSource)
    with pytest.raises(GpuError, match="unknown gpu mode 'cuda'"):
        make_source("cuda", [])
    with pytest.raises(GpuError, match="at least one"):
        make_source("simulated", [])


# ---------------------------------------------------------------- NVML with a fake driver


class FakeNvml:
    """Just enough of pynvml: two GPUs, configurable processes, call counting."""

    def __init__(self, procs: dict[int, list[tuple[int, int | None]]], fail: bool = False) -> None:
        self.procs = procs
        self.fail = fail
        self.reads = 0

    def install(self, mp: pytest.MonkeyPatch) -> None:
        mp.setattr(pynvml, "nvmlInit", lambda: None)
        mp.setattr(pynvml, "nvmlShutdown", lambda: None)
        mp.setattr(pynvml, "nvmlDeviceGetCount", lambda: 2)
        mp.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
        mp.setattr(pynvml, "nvmlDeviceGetName", lambda h: ["NVIDIA GeForce RTX 3060", b"RTX 5060 Ti"][h])
        mp.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: f"GPU-{h}")
        mp.setattr(pynvml, "nvmlDeviceGetMemoryInfo", self.memory)
        mp.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", self.compute)
        mp.setattr(pynvml, "nvmlDeviceGetGraphicsRunningProcesses", lambda h: [])

    def memory(self, h: int) -> SimpleNamespace:
        self.reads += 1
        if self.fail:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        total = [12 * GiB, 16 * GiB][h]
        used = 300 * MiB + sum(u or 0 for _, u in self.procs.get(h, []))
        return SimpleNamespace(total=total, used=used, free=total - used)

    def compute(self, h: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in self.procs.get(h, [])]


async def test_nvml_attributes_memory_to_others_and_to_us(monkeypatch: pytest.MonkeyPatch) -> None:
    frigate, ours = 999_991, 999_992
    fake = FakeNvml({0: [(ours, 6 * GiB)], 1: [(frigate, 1536 * MiB), (ours, 4 * GiB)]})
    fake.install(monkeypatch)
    inv = await NvmlSource().snapshot(own_pids={ours})
    assert inv.mode == "nvml"
    g0, g1 = inv.gpus
    assert (g0.name, g1.name) == ("NVIDIA GeForce RTX 3060", "RTX 5060 Ti")
    assert (g0.uuid, g1.uuid) == ("GPU-0", "GPU-1")
    assert g0.other_bytes == 0
    assert g1.other_bytes == 1536 * MiB
    assert g1.free_bytes == 16 * GiB - 300 * MiB - 1536 * MiB - 4 * GiB
    # Without own pids, our llama-servers count as other processes.
    inv = await NvmlSource().snapshot()
    assert inv.gpus[1].other_bytes == 1536 * MiB + 4 * GiB


async def test_nvml_children_of_own_pids_are_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    # This test process is a child of its parent: listing the parent as ours covers it.
    FakeNvml({0: [(os.getpid(), 2 * GiB)]}).install(monkeypatch)
    inv = await NvmlSource().snapshot(own_pids={os.getppid()})
    assert inv.gpus[0].other_bytes == 0


async def test_nvml_unknown_usage_falls_back_to_used_minus_own(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = 999_992
    FakeNvml({0: [(999_991, None), (ours, 5 * GiB)]}).install(monkeypatch)
    inv = await NvmlSource().snapshot(own_pids={ours})
    # used = 300 MiB driver + 5 GiB ours; the foreign process's share is unknown.
    assert inv.gpus[0].other_bytes == 300 * MiB
    # Our own usage unknown too: the caller's estimate stands in for it.
    FakeNvml({0: [(999_991, None), (ours, None)]}).install(monkeypatch)
    inv = await NvmlSource().snapshot(own_pids={ours}, own_usage={0: 100 * MiB})
    assert inv.gpus[0].other_bytes == 200 * MiB


async def test_nvml_readings_are_cached_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml({})
    fake.install(monkeypatch)
    src = NvmlSource(cache_s=60)
    await asyncio.gather(*(src.snapshot() for _ in range(5)))
    assert fake.reads == 2  # one reading, two GPUs
    uncached = NvmlSource(cache_s=0)
    await uncached.snapshot()
    await uncached.snapshot()
    assert fake.reads == 6
    await uncached.close()


async def test_nvml_failure_is_a_gpu_error(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml({}, fail=True).install(monkeypatch)
    with pytest.raises(GpuError, match="NVML query failed") as e:
        await NvmlSource().snapshot()
    assert e.value.code is Code.UNAVAILABLE


def test_available_with_fake_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml({}).install(monkeypatch)
    assert NvmlSource.available()
    assert isinstance(make_source("auto", []), NvmlSource)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)
    assert not NvmlSource.available()
    with pytest.raises(GpuError, match="no GPUs"):
        make_source("nvml", [])


# ---------------------------------------------------------------- waiting for release


class RisingSource:
    """Free memory on GPU 0 grows by `step` per snapshot, as after a model exits."""

    def __init__(self, start: int, step: int) -> None:
        self.free = start
        self.step = step
        self.calls = 0

    async def snapshot(
        self, own_pids: Collection[int] = (), own_usage: Mapping[int, int] | None = None
    ) -> Inventory:
        self.calls += 1
        free, self.free = self.free, self.free + self.step
        gpu = GpuInfo(0, "fake", 16 * GiB, 16 * GiB - free, free, 0)
        return Inventory((gpu,), "simulated", 8 * GiB, 4 * GiB, 0.0)


async def test_wait_for_release_returns_once_memory_is_back() -> None:
    src = RisingSource(start=1 * GiB, step=1 * GiB)
    assert await wait_for_release(src, [0], 4 * GiB, timeout_s=2, poll_s=0.01)
    assert src.calls == 4


async def test_wait_for_release_gives_up_in_time() -> None:
    src = RisingSource(start=1 * GiB, step=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await wait_for_release(src, [0], 4 * GiB, timeout_s=0.1, poll_s=0.02)
    assert loop.time() - started < 1
    assert src.calls >= 2


async def test_wait_for_release_without_gpus_is_immediate() -> None:
    src = RisingSource(start=0, step=0)
    assert await wait_for_release(src, [], 4 * GiB)
    assert src.calls == 0


async def test_recovery_target_is_ollamas_rule() -> None:
    baseline = await SimulatedSource(BRIEF).snapshot(own_usage={1: 8 * GiB})
    # 75% of an 8 GiB model on GPU 1 on top of what was free before it stopped.
    target = recovery_target(baseline, [1], 8 * GiB)
    assert target == baseline.gpus[1].free_bytes + 6 * GiB
    after = await SimulatedSource(BRIEF).snapshot()
    assert await wait_for_release(SimulatedSource(BRIEF), [1], target, timeout_s=0.1)
    assert after.gpus[1].free_bytes >= target
