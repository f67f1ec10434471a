"""Placement decisions over many rigs, the user's among them: RTX 3060 12 GB (GPU 0) and
RTX 5060 Ti 16 GB (GPU 1) with Frigate holding 1.5 GB on GPU 1."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardian_supervisor.memory.gpus import GpuInfo, Inventory
from guardian_supervisor.memory.placement import (
    Limits,
    NoFit,
    PlaceRequest,
    Plan,
    Resident,
    Wait,
    cuda_env,
    place,
)

M = 1 << 20
G = 1 << 30
COMPUTE = 600 * M
OVERHEAD = 400 * M
NONREP = 500 * M
PER_DEV = COMPUTE + OVERHEAD
RESERVE = 256 * M


def gpu(index: int, total_gb: float, other_gb: float = 0.0, name: str = "") -> tuple[int, int, int, str]:
    return index, int(total_gb * G), int(other_gb * G), name or f"GPU{index}"


def rig(
    *specs: tuple[int, int, int, str],
    residents: Sequence[Resident] = (),
    ram_gb: float = 64,
    ram_free_gb: float = 48,
) -> Inventory:
    """A snapshot whose free memory (GPU and RAM) already excludes what residents hold, as
    the real sources report it; ram_free_gb is what is free without them."""
    gpus = []
    for index, total, other, name in specs:
        ours = sum(r.per_gpu_bytes.get(index, 0) for r in residents)
        used = min(total, other + ours)
        gpus.append(GpuInfo(index, name, total, used, total - used, other))
    ram_free = max(0, int(ram_free_gb * G) - sum(r.cpu_bytes for r in residents))
    return Inventory(tuple(gpus), "simulated" if gpus else "cpu", int(ram_gb * G), ram_free, 0.0)


def brief(residents: Sequence[Resident] = (), frigate_gb: float = 1.5) -> Inventory:
    return rig(gpu(0, 12, 0, "RTX 3060"), gpu(1, 16, frigate_gb, "RTX 5060 Ti"), residents=residents)


def model(name: str, gb: float, n_layer: int = 32, **kw: object) -> PlaceRequest:
    """gb = weights + KV of the repeating layers; non-repeating, compute, overhead on top."""
    per = int(gb * G) // n_layer
    return PlaceRequest(name, (per,) * n_layer, NONREP, COMPUTE, OVERHEAD, **kw)  # type: ignore[arg-type]


def res(name: str, gb: float, gpu_index: int = 0, *, last_used: float = 0, **kw: object) -> Resident:
    return Resident(name, {gpu_index: int(gb * G)}, last_used=last_used, **kw)  # type: ignore[arg-type]


LIMITS = Limits(reserve_per_gpu_bytes=RESERVE)


def full_need(req: PlaceRequest) -> int:
    return req.weights_bytes + PER_DEV


def as_plan(d: object) -> Plan:
    assert isinstance(d, Plan), d
    return d


# ---------------------------------------------------------------- one GPU or two


def test_fits_one_gpu_and_goes_to_the_one_with_most_free() -> None:
    req = model("qwen-7b", 8)
    plan = as_plan(place(req, brief(), [], LIMITS))
    # 5060 Ti: 16 - 1.5 (Frigate) = 14.5 GB free beats the 3060's 12 GB.
    assert plan.gpus == (1,)
    assert plan.main_gpu == 1
    assert plan.tensor_split is None
    assert plan.n_gpu_layers == 33
    assert plan.fits_fully and plan.cpu_bytes == 0 and plan.evict == ()
    assert plan.per_gpu_bytes == {1: full_need(req)}


def test_cuda_env_shows_only_the_plans_gpus_in_nvml_order() -> None:
    one = as_plan(place(model("m", 8), brief(), [], LIMITS))
    assert cuda_env(one) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}
    two = as_plan(place(model("m", 20), brief(), [], LIMITS))
    assert cuda_env(two)["CUDA_VISIBLE_DEVICES"] == "0,1"
    cpu = as_plan(place(model("m", 8), rig(), [], LIMITS))
    assert cuda_env(cpu)["CUDA_VISIBLE_DEVICES"] == ""


def test_one_gpu_choice_follows_free_memory_not_size() -> None:
    # Frigate grows to 6 GB: the 3060 (12 GB free) now has more room than the 5060 Ti (10).
    plan = as_plan(place(model("m", 8), brief(frigate_gb=6), [], LIMITS))
    assert plan.gpus == (0,)
    assert plan.main_gpu == 0


def test_needs_both_gpus_split_in_proportion_to_room() -> None:
    req = model("qwen-32b", 20, n_layer=64)
    plan = as_plan(place(req, brief(), [], LIMITS))
    assert plan.gpus == (0, 1)
    assert plan.main_gpu is None
    assert plan.n_gpu_layers == 65 and plan.fits_fully
    assert plan.tensor_split is not None
    assert sum(plan.tensor_split) == 65
    n0, n1 = plan.tensor_split
    per = req.layer_bytes[0]
    # Counts turn into bytes exactly; the output layer (non-repeating) is on the last GPU.
    assert plan.per_gpu_bytes[0] == int(n0) * per + PER_DEV
    assert plan.per_gpu_bytes[1] == int(n1 - 1) * per + NONREP + PER_DEV
    # Frigate's 1.5 GB and the reserve are respected on GPU 1.
    room0, room1 = 12 * G - RESERVE, 16 * G - int(1.5 * G) - RESERVE
    assert plan.per_gpu_bytes[0] <= room0
    assert plan.per_gpu_bytes[1] <= room1
    # Proportional: both GPUs end up equally full, to within a layer.
    fill0 = (plan.per_gpu_bytes[0] - PER_DEV) / (room0 - PER_DEV)
    fill1 = (plan.per_gpu_bytes[1] - PER_DEV) / (room1 - PER_DEV)
    assert abs(fill0 - fill1) <= per / (room0 - PER_DEV)
    assert n1 > n0


def test_split_uses_the_fewest_gpus_with_the_most_room() -> None:
    inv = rig(gpu(0, 8), gpu(1, 24), gpu(2, 24), gpu(3, 8))
    plan = as_plan(place(model("m", 30, n_layer=60), inv, [], LIMITS))
    assert plan.gpus == (1, 2)


def test_gpu_too_small_for_overhead_and_two_layers_is_dropped() -> None:
    # GPU 1 has 1.2 GB: less than compute + overhead + 2 layers, so it is not used.
    inv = rig(gpu(0, 24), gpu(1, 1.2))
    req = model("m", 30, n_layer=60, allow_cpu_offload=True)
    plan = as_plan(place(req, inv, [], LIMITS))
    assert plan.gpus == (0,)
    assert not plan.fits_fully


# ---------------------------------------------------------------- eviction


def test_evicts_least_recently_used_and_only_as_many_as_needed() -> None:
    residents = [res("c", 6, last_used=30), res("a", 6, last_used=10), res("b", 6, last_used=20)]
    inv = rig(gpu(0, 24), residents=residents)  # 6 GB free
    assert as_plan(place(model("new", 9), inv, residents, Limits())).evict == ("a",)
    assert as_plan(place(model("new", 14), inv, residents, Limits())).evict == ("a", "b")


def test_spares_an_old_model_whose_eviction_would_not_help() -> None:
    # "a" is least recently used but sits on the small GPU; only evicting "b" makes room.
    residents = [res("a", 2, 1, last_used=1), res("b", 16, 0, last_used=2)]
    inv = rig(gpu(0, 24), gpu(1, 4), residents=residents)
    plan = as_plan(place(model("new", 12), inv, residents, Limits()))
    assert plan.evict == ("b",)
    assert plan.gpus == (0,)


def test_prefers_a_split_to_an_eviction() -> None:
    residents = [res("a", 8, 1, last_used=1)]
    plan = as_plan(place(model("new", 12), brief(residents), residents, LIMITS))
    assert plan.evict == ()
    assert plan.gpus == (0, 1)


def test_pinned_model_is_never_evicted() -> None:
    residents = [res("pinned", 8, last_used=1, pinned=True), res("a", 8, last_used=2)]
    inv = rig(gpu(0, 24), residents=residents)
    assert as_plan(place(model("new", 10), inv, residents, Limits())).evict == ("a",)
    d = place(model("huge", 18), inv, residents, Limits())
    assert isinstance(d, NoFit)
    assert "pinned" in d.reason and "huge" in d.reason


def test_busy_model_means_wait_but_idle_ones_go_first() -> None:
    residents = [res("busy", 12, last_used=1, inflight=2), res("idle", 4, last_used=2)]
    inv = rig(gpu(0, 24), residents=residents)  # 8 GB free
    # The idle model is enough even though the busy one is older.
    assert as_plan(place(model("new", 10), inv, residents, Limits())).evict == ("idle",)
    # Only the busy model's memory would do: wait for it, never evict it mid-request.
    assert place(model("new", 14), inv, residents, Limits()) == Wait("new", ("busy",))


def test_model_still_loading_counts_before_its_memory_shows() -> None:
    loading = res("loading", 16, last_used=5)
    inv = rig(gpu(0, 24))  # the driver still shows 24 GB free
    plan = as_plan(place(model("new", 10), inv, [loading], Limits()))
    assert plan.evict == ("loading",)


def test_a_resident_with_the_requested_name_is_ignored() -> None:
    residents = [res("same", 8, last_used=1)]
    plan = as_plan(place(model("same", 4), rig(gpu(0, 24), residents=residents), residents, Limits()))
    assert plan.evict == ()


# ---------------------------------------------------------------- limits


def test_max_loaded_models_evicts_even_with_memory_to_spare() -> None:
    residents = [res("a", 1, last_used=2), res("b", 1, last_used=1)]
    inv = rig(gpu(0, 24), gpu(1, 24), residents=residents)
    plan = as_plan(place(model("new", 1), inv, residents, Limits(max_loaded_models=2)))
    assert plan.evict == ("b",)
    busy = [res("a", 1, last_used=2, inflight=1), res("b", 1, last_used=1, inflight=1)]
    assert place(model("new", 1), inv, busy, Limits(max_loaded_models=2)) == Wait("new", ("b",))
    pinned = [res("a", 1, pinned=True), res("b", 1, pinned=True)]
    d = place(model("new", 1), inv, pinned, Limits(max_loaded_models=2))
    assert isinstance(d, NoFit) and "max_loaded_models" in d.reason


def test_vram_limit_caps_guardians_total() -> None:
    residents = [res("a", 4, 0, last_used=1)]
    inv = brief(residents)
    limits = Limits(vram_limit_bytes=10 * G, reserve_per_gpu_bytes=RESERVE)
    req = model("new", 7)
    # 4 GB resident + 8.5 GB new > 10 GB: "a" goes although both GPUs have room.
    plan = as_plan(place(req, inv, residents, limits))
    assert plan.evict == ("a",)
    assert sum(plan.per_gpu_bytes.values()) <= 10 * G
    pinned = [res("a", 4, 0, pinned=True)]
    d = place(req, brief(pinned), pinned, limits)
    assert isinstance(d, NoFit)
    assert "VRAM limit of 10240 MiB" in d.reason
    assert d.available_bytes == 6 * G


def test_vram_limit_refuses_a_split_the_gpus_could_hold() -> None:
    d = place(model("big", 20), brief(), [], Limits(vram_limit_bytes=14 * G))
    assert isinstance(d, NoFit)
    assert d.available_bytes == 14 * G


# ---------------------------------------------------------------- never fits


def test_never_fits_reports_the_numbers() -> None:
    req = model("llama-70b", 40)
    d = place(req, brief(), [], LIMITS)
    assert isinstance(d, NoFit)
    assert d.needed_bytes == req.weights_bytes + 2 * PER_DEV
    room = (12 * G - RESERVE) + (16 * G - int(1.5 * G) - RESERVE)
    assert d.available_bytes == room
    assert "'llama-70b'" in d.reason
    assert f"{d.needed_bytes / M:.0f} MiB" in d.reason
    assert f"{room / M:.0f} MiB" in d.reason
    assert "CPU offload is disabled" in d.reason


# ---------------------------------------------------------------- the user's tensor_split


def test_user_tensor_split_that_fits_is_honoured() -> None:
    req = model("m", 16, tensor_split=(0.55, 0.45))
    plan = as_plan(place(req, brief(), [], LIMITS))
    assert plan.gpus == (0, 1)
    assert plan.tensor_split == (0.55, 0.45)
    assert plan.n_gpu_layers == 33
    # llama.cpp: layer j of 33 goes to GPU 0 while j/33 < 0.55, so 19 there, 14 (with output) on GPU 1.
    per = req.layer_bytes[0]
    assert plan.per_gpu_bytes == {0: 19 * per + PER_DEV, 1: 13 * per + NONREP + PER_DEV}


def test_user_tensor_split_that_does_not_fit() -> None:
    d = place(model("m", 16, tensor_split=(0.9, 0.1)), brief(), [], LIMITS)
    assert isinstance(d, NoFit)
    assert "GPU 0 (RTX 3060)" in d.reason and "tensor_split (0.9, 0.1)" in d.reason
    assert d.available_bytes == 12 * G - RESERVE
    assert d.needed_bytes > d.available_bytes


def test_user_tensor_split_evicts_from_the_gpu_it_needs() -> None:
    residents = [res("on1", 4, 1, last_used=1), res("on0", 6, 0, last_used=2)]
    plan = as_plan(place(model("m", 16, tensor_split=(0.55, 0.45)), brief(residents), residents, LIMITS))
    assert plan.evict == ("on0",)


def test_user_tensor_split_with_a_zero_share_is_one_gpu() -> None:
    plan = as_plan(place(model("m", 8, tensor_split=(0.0, 1.0)), brief(), [], LIMITS))
    assert plan.gpus == (1,) and plan.main_gpu == 1 and plan.tensor_split is None


def test_user_tensor_split_longer_than_the_rig() -> None:
    d = place(model("m", 8, tensor_split=(1, 1, 1)), brief(), [], LIMITS)
    assert isinstance(d, NoFit) and "3 entries" in d.reason


# ---------------------------------------------------------------- CPU offload and CPU mode


def test_cpu_offload_allowed_puts_as_many_layers_on_gpu_as_fit() -> None:
    req = model("llama-70b", 40, n_layer=80, allow_cpu_offload=True)
    plan = as_plan(place(req, brief(), [], LIMITS))
    assert not plan.fits_fully
    assert 0 < plan.n_gpu_layers <= 80
    assert sum(plan.tensor_split or ()) == plan.n_gpu_layers
    per = req.layer_bytes[0]
    on_cpu = 80 - plan.n_gpu_layers
    assert plan.cpu_bytes == on_cpu * per + NONREP + COMPUTE
    rooms = {0: 12 * G - RESERVE, 1: 16 * G - int(1.5 * G) - RESERVE}
    assert all(b <= rooms[i] for i, b in plan.per_gpu_bytes.items())
    # One more layer would not fit anywhere.
    assert sum(rooms.values()) - sum(plan.per_gpu_bytes.values()) < 2 * per


def test_cpu_offload_refused_is_no_fit() -> None:
    d = place(model("llama-70b", 40, allow_cpu_offload=False), brief(), [], LIMITS)
    assert isinstance(d, NoFit)


def test_cpu_offload_needs_the_ram_too() -> None:
    inv = rig(gpu(0, 12), ram_free_gb=8)
    d = place(model("big", 40, allow_cpu_offload=True), inv, [], LIMITS)
    assert isinstance(d, NoFit)
    assert "system RAM" in d.reason and d.available_bytes == 8 * G


def test_cpu_offload_evicts_idle_models_that_buy_layers() -> None:
    residents = [res("a", 6, 0, last_used=1), res("busy", 4, 1, last_used=0, inflight=1)]
    plan = as_plan(place(model("big", 40, allow_cpu_offload=True), brief(residents), residents, LIMITS))
    assert plan.evict == ("a",)


def test_cpu_only_mode() -> None:
    inv = rig(ram_free_gb=16)
    req = model("m", 8)
    plan = as_plan(place(req, inv, [], LIMITS))
    assert (plan.gpus, plan.n_gpu_layers, plan.tensor_split, plan.main_gpu) == ((), 0, None, None)
    assert plan.cpu_bytes == req.weights_bytes + COMPUTE
    assert plan.fits_fully and plan.per_gpu_bytes == {}
    d = place(model("big", 20), inv, [], LIMITS)
    assert isinstance(d, NoFit) and "system RAM" in d.reason


def test_cpu_only_mode_evicts_by_ram() -> None:
    residents = [Resident("old", {}, cpu_bytes=10 * G, last_used=1)]
    inv = rig(residents=residents, ram_free_gb=16)  # 6 GB free with "old" loaded
    plan = as_plan(place(model("m", 8), inv, residents, LIMITS))
    assert plan.evict == ("old",)


def test_negative_sizes_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        place(PlaceRequest("m", (-1,), 0, 0, 0), brief(), [], LIMITS)


# ---------------------------------------------------------------- properties

Scenario = tuple[PlaceRequest, Callable[[Sequence[Resident]], Inventory], list[Resident], Limits]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n_gpu = draw(st.integers(0, 3))
    specs = [
        gpu(i, draw(st.sampled_from([4, 8, 12, 16, 24])), draw(st.sampled_from([0, 0, 0.5, 1.5, 3])))
        for i in range(n_gpu)
    ]
    # Drawn first: residents' RAM must fit in what is free, as on a real machine.
    ram_free_gb = draw(st.sampled_from([4, 16, 48]))
    residents: list[Resident] = []
    for k in range(draw(st.integers(0, 4))):
        per_gpu = {i: draw(st.integers(0, 6 * G)) for i in range(n_gpu) if draw(st.booleans())}
        residents.append(
            Resident(
                f"r{k}",
                per_gpu,
                inflight=draw(st.sampled_from([0, 0, 1])),
                pinned=draw(st.booleans()) and draw(st.booleans()),
                last_used=draw(st.floats(0, 100)),
                cpu_bytes=0 if n_gpu else draw(st.integers(0, ram_free_gb * G // 4)),
            )
        )

    def snapshot(present: Sequence[Resident]) -> Inventory:
        return rig(*specs, residents=present, ram_gb=64, ram_free_gb=ram_free_gb)

    n_layer = draw(st.integers(1, 48))
    layer = draw(st.integers(10 * M, 900 * M))
    split = None
    if n_gpu and draw(st.booleans()):
        split = tuple(draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])) for _ in range(n_gpu))
        if sum(split) == 0:
            split = None
    req = PlaceRequest(
        "new",
        tuple(layer + draw(st.integers(0, 50 * M)) for _ in range(n_layer)),
        draw(st.integers(0, 800 * M)),
        draw(st.integers(0, 1200 * M)),
        draw(st.sampled_from([0, 457 * M])),
        split,
        draw(st.booleans()),
    )
    limits = Limits(
        vram_limit_bytes=draw(st.none() | st.integers(4 * G, 40 * G)),
        reserve_per_gpu_bytes=draw(st.sampled_from([0, 256 * M])),
        max_loaded_models=draw(st.integers(0, 4)),
    )
    return req, snapshot, residents, limits


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_plans_respect_memory_limits_and_evict_only_idle_unpinned(
    case: Scenario,
) -> None:
    req, snapshot, residents, limits = case
    inv = snapshot(residents)
    d = place(req, inv, residents, limits)
    by_name = {r.model: r for r in residents}
    if isinstance(d, Wait):
        assert d.blocked_by
        assert all(by_name[m].inflight > 0 and not by_name[m].pinned for m in d.blocked_by)
        return
    if isinstance(d, NoFit):
        assert "'new'" in d.reason
        return
    evicted = [by_name[m] for m in d.evict]
    assert all(r.inflight == 0 and not r.pinned for r in evicted)
    assert len(set(d.evict)) == len(d.evict)
    # Never more on a GPU than it has free once the evicted models are gone, minus the reserve.
    for g in inv.gpus:
        freed = sum(r.per_gpu_bytes.get(g.index, 0) for r in evicted)
        assert d.per_gpu_bytes.get(g.index, 0) <= g.free_bytes + freed - limits.reserve_per_gpu_bytes or (
            d.per_gpu_bytes.get(g.index, 0) == 0
        )
    kept = [r for r in residents if r.model not in d.evict]
    if limits.max_loaded_models > 0:
        assert len(kept) + 1 <= limits.max_loaded_models
    if limits.vram_limit_bytes is not None:
        assert sum(r.gpu_bytes for r in kept) + sum(d.per_gpu_bytes.values()) <= limits.vram_limit_bytes or (
            not d.per_gpu_bytes
        )
    assert set(d.per_gpu_bytes) == set(d.gpus)
    if len(d.gpus) > 1:
        assert d.tensor_split is not None and len(d.tensor_split) == len(d.gpus)
        assert d.main_gpu is None
    else:
        assert d.tensor_split is None
        assert d.main_gpu == (d.gpus[0] if d.gpus else None)
    if inv.gpus:
        assert d.fits_fully == (d.n_gpu_layers == req.n_layer + 1)
        assert d.fits_fully or req.allow_cpu_offload
        assert d.fits_fully == (d.cpu_bytes == 0)
    else:
        assert d.n_gpu_layers == 0 and d.gpus == ()


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_fewer_residents_never_turn_a_plan_into_no_fit(
    case: Scenario,
) -> None:
    """Monotonicity: with every unpinned model already gone, a model that had a Plan or a
    Wait still gets a Plan."""
    req, snapshot, residents, limits = case
    before = place(req, snapshot(residents), residents, limits)
    if isinstance(before, NoFit):
        return
    pinned = [r for r in residents if r.pinned]
    after = place(req, snapshot(pinned), pinned, limits)
    assert isinstance(after, Plan), (before, after)
    assert after.evict == ()
