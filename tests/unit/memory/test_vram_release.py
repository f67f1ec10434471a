"""After a stop on real GPUs, wait for NVML to show the memory back, measured against free
memory noted *before* the stop (NVML lags; a baseline taken after would never be reached)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from guardian_supervisor.memory.gpus import GpuInfo, Inventory
from guardian_supervisor.memory.planner import Placed, VramPlanner

GiB = 1 << 30


class FakeNvml:
    """One 12 GiB GPU whose free memory the test moves by hand."""

    def __init__(self) -> None:
        self.free = 12 * GiB
        self.snapshots = 0

    async def snapshot(self, own_pids=(), own_usage=None) -> Inventory:
        self.snapshots += 1
        gpu = GpuInfo(0, "RTX 3060", 12 * GiB, 12 * GiB - self.free, self.free, 0)
        return Inventory((gpu,), "nvml", 64 * GiB, 32 * GiB, time.time())


def planner(source: FakeNvml) -> VramPlanner:
    config = SimpleNamespace(settings=SimpleNamespace(gpus=SimpleNamespace(release_timeout_s=3.0)))
    p = VramPlanner(lambda: config, source, lambda: [])  # type: ignore[arg-type]
    p.placed["m"] = Placed({0: 8 * GiB}, 0, 8 * GiB, (0,))
    return p


async def test_memory_back_at_once_does_not_wait():
    src = FakeNvml()
    src.free = 4 * GiB  # the model holds 8 GiB
    p = planner(src)
    rt = SimpleNamespace(name="m")
    await p.before_stop(rt)  # type: ignore[arg-type]
    src.free = 12 * GiB  # the driver already gave it back
    t0 = time.monotonic()
    await p.after_stop(rt)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 1.0, "the recovery target is relative to the free memory before the stop"
    assert "m" not in p.placed


async def test_lagging_memory_is_waited_for():
    src = FakeNvml()
    src.free = 4 * GiB
    p = planner(src)
    rt = SimpleNamespace(name="m")
    await p.before_stop(rt)  # type: ignore[arg-type]
    t0 = time.monotonic()
    import asyncio

    async def release_later() -> None:
        await asyncio.sleep(0.6)
        src.free = 12 * GiB

    task = asyncio.create_task(release_later())
    await p.after_stop(rt)  # type: ignore[arg-type]
    await task
    waited = time.monotonic() - t0
    assert 0.5 < waited < 2.5, waited


async def test_no_wait_when_the_server_was_already_gone():
    src = FakeNvml()
    p = planner(src)
    t0 = time.monotonic()
    await p.after_stop(SimpleNamespace(name="m"))  # type: ignore[arg-type]  # no before_stop: it had exited
    assert time.monotonic() - t0 < 0.5 and "m" not in p.placed
