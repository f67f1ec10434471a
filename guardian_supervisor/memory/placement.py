"""Placement: where a model goes, what must be evicted first, or why it cannot load.

Pure decisions, no I/O: an inventory snapshot, the resident models and the request's
estimate in; a Plan, a Wait or a NoFit out. The rules follow Ollama's old scheduler and
placement (reference/llama-server.md §4), adapted to llama-server's layer split:

- Memory free for a new model on a GPU is min(reported free, total - others - Σ residents'
  estimates), so models still loading count before their memory shows up; minus a reserve.
- Prefer no eviction; then evict idle, unpinned models, least recently used first, and only
  as many as needed. If only evicting a busy model would do, answer Wait.
- One GPU (the one with the most room) if the model fits there; else the fewest GPUs with
  the most room, layers split so each GPU is filled in proportion to its room. With a
  user tensor_split, that split is checked as llama.cpp would apply it.
- If it cannot fit fully even with every unpinned model gone, and the model allows offload:
  for MoE models, every layer on GPUs with the experts of the fewest first layers in RAM
  (--n-cpu-moe); else the first layers on the CPU (as many layers on GPU as fit). NoFit
  only when that does not fit the RAM either.

Layer order matters: llama.cpp puts the *last* n_gpu_layers repeating layers on GPUs, gives
the lowest device the first of them, and puts the output layer (the non-repeating weights
here) on the last device, and only when n_gpu_layers = n_layer + 1.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from guardian_supervisor.memory.gpus import Inventory

MiB = 1 << 20

# Ollama's balancing search runs on a ratio in [0, 1]; 40 halvings are far finer than a byte.
_BISECT_STEPS = 40


@dataclass(frozen=True)
class PlaceRequest:
    """What the estimate says a model needs.

    layer_bytes: per repeating layer, its weights plus its KV cache. nonrepeating_bytes:
    token_embd/output weights, placed with the output layer. compute_bytes and
    overhead_bytes: per device used. tensor_split: the user's override from models.yaml,
    one share per GPU in index order (missing trailing entries mean 0).
    """

    model: str
    layer_bytes: tuple[int, ...]
    nonrepeating_bytes: int
    compute_bytes: int
    overhead_bytes: int
    tensor_split: tuple[float, ...] | None = None
    allow_cpu_offload: bool = False
    # MoE: bytes of each layer's expert tensors (ffn_*_exps), part of layer_bytes. With
    # --n-cpu-moe N the experts of the first N layers stay in RAM, everything else on GPUs.
    expert_bytes: tuple[int, ...] = ()
    # Weights the user's own -ot/--cpu-moe/--n-cpu-moe keep in RAM whatever -ngl says; not
    # in layer_bytes/nonrepeating_bytes/expert_bytes. They bring a CPU compute buffer along.
    ram_bytes: int = 0
    # RAM that brings no text-model compute buffer: a projector kept there by
    # --no-mmproj-offload (its own warm-up buffer is inside these bytes).
    ram_side_bytes: int = 0

    @property
    def n_layer(self) -> int:
        return len(self.layer_bytes)

    @property
    def gpu_weights_bytes(self) -> int:
        """Weights + KV cache that -ngl can put on the GPUs."""
        return sum(self.layer_bytes) + self.nonrepeating_bytes

    @property
    def weights_bytes(self) -> int:
        """Weights + KV cache of the whole model, without compute buffers or overhead."""
        return self.gpu_weights_bytes + self.extra_ram_bytes

    @property
    def extra_ram_bytes(self) -> int:
        """What the user's flags keep in RAM whatever -ngl says."""
        return self.ram_bytes + self.ram_side_bytes

    @property
    def pinned_ram_bytes(self) -> int:
        """RAM the user's overrides need with everything else on the GPUs."""
        return (self.ram_bytes + self.compute_bytes if self.ram_bytes else 0) + self.ram_side_bytes


@dataclass(frozen=True)
class Resident:
    """A model Guardian has loaded or is loading. per_gpu_bytes is its estimate (the Plan's
    per_gpu_bytes), cpu_bytes the RAM it was planned to hold."""

    model: str
    per_gpu_bytes: Mapping[int, int]
    inflight: int = 0
    pinned: bool = False
    last_used: float = 0.0
    cpu_bytes: int = 0

    @property
    def gpu_bytes(self) -> int:
        return sum(self.per_gpu_bytes.values())


@dataclass(frozen=True)
class Limits:
    """vram_limit_bytes caps what Guardian's models hold across all GPUs (None: no cap);
    reserve_per_gpu_bytes is left free on every GPU; max_loaded_models <= 0 means no cap."""

    vram_limit_bytes: int | None = None
    reserve_per_gpu_bytes: int = 0
    max_loaded_models: int = 0


@dataclass(frozen=True)
class Plan:
    """Stop `evict` (in order), then start the model on `gpus` with these settings.

    gpus=() means no GPU at all (CPU mode, or an offload that fits no layer): hide the GPUs
    from llama-server and pass -ngl 0. tensor_split is aligned with `gpus` (None for one GPU
    or none); main_gpu is set only for a single GPU. per_gpu_bytes is what to record as the
    Resident's estimate.
    """

    model: str
    evict: tuple[str, ...]
    gpus: tuple[int, ...]
    tensor_split: tuple[float, ...] | None
    main_gpu: int | None
    n_gpu_layers: int
    per_gpu_bytes: Mapping[int, int]
    cpu_bytes: int
    fits_fully: bool
    n_cpu_moe: int = 0  # experts of the first n_cpu_moe layers in RAM (--n-cpu-moe)


@dataclass(frozen=True)
class NoFit:
    """The model cannot load here even with every evictable model gone; `reason` is a full
    sentence naming the model and the MiB needed and available."""

    model: str
    needed_bytes: int
    available_bytes: int
    reason: str


@dataclass(frozen=True)
class Wait:
    """The model fits only once these busy models are evicted: wait for them to drain, then
    plan again."""

    model: str
    blocked_by: tuple[str, ...]


Decision = Plan | NoFit | Wait


# ---------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Pool:
    """Room for the new model given one set of evictions."""

    caps: Mapping[int, int]  # usable bytes per GPU index, after the reserve
    budget: int | None  # cap on the new model's GPU total from vram_limit
    cpu: int  # system RAM for the new model


@dataclass(frozen=True)
class _Layout:
    ngl: int
    per_gpu: dict[int, int]
    split: tuple[float, ...] | None  # aligned with sorted(per_gpu)
    cpu_bytes: int
    full: bool
    n_cpu_moe: int = 0


_Fit = Callable[[_Pool], _Layout | None]


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


def _f32(x: float) -> float:
    # llama.cpp computes split points in float; mimic it so layer boundaries match exactly.
    return float(struct.unpack("f", struct.pack("f", x))[0])


def _check_request(req: PlaceRequest) -> None:
    sizes = (
        *req.layer_bytes,
        req.nonrepeating_bytes,
        req.compute_bytes,
        req.overhead_bytes,
        req.ram_bytes,
        req.ram_side_bytes,
    )
    if any(s < 0 for s in sizes):
        raise ValueError(f"placement request for {req.model!r} has a negative size")


def _split_problem(req: PlaceRequest, inv: Inventory) -> str | None:
    """Why the user's tensor_split cannot apply to this machine, if it cannot."""
    ts = req.tensor_split
    if ts is None:
        return None
    if len(ts) > len(inv.gpus):
        return f"tensor_split {ts} has {len(ts)} entries but this machine has {len(inv.gpus)} GPU(s)"
    if any(not s >= 0 or s == float("inf") for s in ts) or sum(ts) <= 0:
        return f"tensor_split {ts} must be non-negative numbers with a positive sum"
    return None


def _count_ok(others: Sequence[Resident], evict: Sequence[Resident], limits: Limits) -> bool:
    """max_loaded_models: the residents left plus the new model stay within the cap."""
    cap = limits.max_loaded_models
    return cap <= 0 or len(others) - len(evict) + 1 <= cap


def _eviction_order(others: Sequence[Resident]) -> list[Resident]:
    """Unpinned models, idle ones first, each group least recently used first."""
    unpinned = [r for r in others if not r.pinned]
    return sorted(unpinned, key=lambda r: (r.inflight > 0, r.last_used, r.model))


def _pool(inv: Inventory, others: Sequence[Resident], evict: Sequence[Resident], limits: Limits) -> _Pool:
    """Room per GPU, VRAM-limit budget and RAM left for the new model once `evict` is gone."""
    gone = {r.model for r in evict}
    kept = [r for r in others if r.model not in gone]
    caps: dict[int, int] = {}
    for g in inv.gpus:
        freed = sum(r.per_gpu_bytes.get(g.index, 0) for r in evict)
        ours = freed + sum(r.per_gpu_bytes.get(g.index, 0) for r in kept)
        # Trust the smaller: a model still loading has not allocated yet (reported free too
        # high); the driver's own reservations are in no process (accounting too high).
        free_now = max(0, min(g.free_bytes, g.total_bytes - g.other_bytes - ours))
        # Evicting can never give back more than the card has beside what stays resident.
        ceiling = g.total_bytes - g.other_bytes - (ours - freed)
        caps[g.index] = max(0, min(free_now + freed, ceiling) - limits.reserve_per_gpu_bytes)
    budget = None
    if limits.vram_limit_bytes is not None:
        budget = max(0, limits.vram_limit_bytes - sum(r.gpu_bytes for r in kept))
    ram_ours = sum(r.cpu_bytes for r in others)
    ram_now = max(0, min(inv.cpu_available_bytes, inv.cpu_total_bytes - ram_ours))
    ram_kept = sum(r.cpu_bytes for r in kept)
    ram = min(ram_now + sum(r.cpu_bytes for r in evict), max(0, inv.cpu_total_bytes - ram_kept))
    return _Pool(caps, budget, ram)


def _gpu_sizes(req: PlaceRequest, ngl: int) -> list[int]:
    """Sizes of the layers that -ngl `ngl` puts on GPUs, in llama.cpp's order."""
    if ngl > req.n_layer:
        return [*req.layer_bytes, req.nonrepeating_bytes]
    return list(req.layer_bytes[req.n_layer - ngl :])


def _cpu_bytes(req: PlaceRequest, ngl: int) -> int:
    """RAM for what stays on the CPU with -ngl `ngl` (plus a CPU compute buffer)."""
    if ngl > req.n_layer:
        return req.pinned_ram_bytes
    return (
        sum(req.layer_bytes[: req.n_layer - ngl])
        + req.nonrepeating_bytes
        + req.compute_bytes
        + req.extra_ram_bytes
    )


def _greedy(sizes: Sequence[int], room: Sequence[int], ratio: float) -> list[int] | None:
    """Fill devices in order with contiguous layers up to ratio x room; None if some are left."""
    counts: list[int] = []
    i = 0
    for r in room:
        cap, used, start = int(r * ratio), 0, i
        while i < len(sizes) and used + sizes[i] <= cap:
            used += sizes[i]
            i += 1
        counts.append(i - start)
    return counts if i == len(sizes) else None


def _partition(sizes: Sequence[int], room: Sequence[int]) -> list[int] | None:
    """Layer counts per device, contiguous, filling every device to the same fraction of
    its room (as low as possible): a split proportional to capacity. None if it can't fit."""
    if _greedy(sizes, room, 1.0) is None:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if _greedy(sizes, room, mid) is None:
            lo = mid
        else:
            hi = mid
    return _greedy(sizes, room, hi)


def _layout_of(req: PlaceRequest, ngl: int, counts: Mapping[int, int]) -> _Layout:
    """Bytes per GPU for contiguous layer counts on GPUs in index order (0 counts dropped)."""
    sizes = _gpu_sizes(req, ngl)
    per_gpu: dict[int, int] = {}
    split: list[float] = []
    i = 0
    for idx in sorted(counts):
        n = counts[idx]
        if n <= 0:
            continue
        per_gpu[idx] = sum(sizes[i : i + n]) + req.compute_bytes + req.overhead_bytes
        split.append(float(n))
        i += n
    return _Layout(
        ngl, per_gpu, tuple(split) if len(split) > 1 else None, _cpu_bytes(req, ngl), ngl > req.n_layer
    )


def _within_budget(layout: _Layout, pool: _Pool) -> bool:
    return pool.budget is None or sum(layout.per_gpu.values()) <= pool.budget


def _auto_layout(req: PlaceRequest, pool: _Pool, ngl: int) -> _Layout | None:
    """Our own split for -ngl `ngl`: fewest GPUs with the most room, balanced by room."""
    sizes = _gpu_sizes(req, ngl)
    if not sizes:
        return _layout_of(req, 0, {})
    per_dev = req.compute_bytes + req.overhead_bytes
    # Like Ollama, skip GPUs that can't hold their overhead plus a couple of layers.
    floor = per_dev + min(2, len(sizes)) * max(sizes)
    viable = [i for i in sorted(pool.caps, key=lambda i: (-pool.caps[i], i)) if pool.caps[i] >= floor]
    for m in range(1, len(viable) + 1):
        chosen = sorted(viable[:m])
        counts = _partition(sizes, [pool.caps[i] - per_dev for i in chosen])
        if counts is None:
            continue
        layout = _layout_of(req, ngl, dict(zip(chosen, counts, strict=True)))
        if _within_budget(layout, pool):
            return layout
    return None


def _user_needs(req: PlaceRequest, ngl: int, indices: Sequence[int]) -> dict[int, int]:
    """Bytes per GPU when llama.cpp applies the user's tensor_split with -ngl `ngl`
    (llama_model_load: upper_bound over the normalised cumulative shares)."""
    shares = [*(req.tensor_split or ()), *[0.0] * len(indices)][: len(indices)]
    cum: list[float] = []
    total = 0.0
    for s in shares:
        total = _f32(total + _f32(s))
        cum.append(total)
    cum = [_f32(c / total) for c in cum]
    per_dev = req.compute_bytes + req.overhead_bytes
    # Every GPU with a share is visible to llama-server and pays its overhead.
    needs = {idx: per_dev for idx, s in zip(indices, shares, strict=True) if s > 0}
    sizes = _gpu_sizes(req, ngl)
    for j, size in enumerate(sizes):
        idx = indices[min(bisect.bisect_right(cum, _f32(j / len(sizes))), len(indices) - 1)]
        needs[idx] = needs.get(idx, per_dev) + size
    return needs if sizes else {}


def _user_layout(req: PlaceRequest, pool: _Pool, ngl: int) -> _Layout | None:
    """The user's tensor_split for -ngl `ngl`, if every GPU it uses has room."""
    needs = _user_needs(req, ngl, sorted(pool.caps))
    if any(need > pool.caps[idx] for idx, need in needs.items()):
        return None
    # tensor_split positions are GPU positions; keep the shares of the GPUs it uses.
    indices, shares = sorted(pool.caps), req.tensor_split or ()
    split = tuple(float(shares[p]) for p in range(len(shares)) if indices[p] in needs)
    layout = _Layout(ngl, needs, split if len(split) > 1 else None, _cpu_bytes(req, ngl), ngl > req.n_layer)
    return layout if _within_budget(layout, pool) else None


def _layout(req: PlaceRequest, pool: _Pool, ngl: int) -> _Layout | None:
    """A GPU layout for -ngl `ngl` under `pool`, or None."""
    if req.tensor_split is not None:
        return _user_layout(req, pool, ngl)
    return _auto_layout(req, pool, ngl)


def _best_partial(req: PlaceRequest, pool: _Pool) -> _Layout:
    """The layout with the most layers on GPUs (ngl may be 0: everything on the CPU)."""
    full = req.n_layer + 1
    if req.tensor_split is not None:
        # A fixed split's per-GPU load is not monotone in ngl: scan down.
        for ngl in range(full, 0, -1):
            layout = _user_layout(req, pool, ngl)
            if layout is not None:
                return layout
        return _layout_of(req, 0, {})
    lo, hi = 0, full  # our own balanced split fits fewer layers whenever it fits more
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _auto_layout(req, pool, mid) is not None:
            lo = mid
        else:
            hi = mid - 1
    return _auto_layout(req, pool, lo) or _layout_of(req, 0, {})


def _cpu_layout(req: PlaceRequest, pool: _Pool) -> _Layout | None:
    """CPU mode: the whole model and its compute buffer in RAM."""
    need = req.weights_bytes + req.compute_bytes
    return _Layout(0, {}, None, need, True) if need <= pool.cpu else None


def _experts_on_cpu(req: PlaceRequest, n: int) -> PlaceRequest:
    """The request as the GPUs see it when the first `n` layers' experts stay in RAM."""
    layers = tuple(b - (req.expert_bytes[i] if i < n else 0) for i, b in enumerate(req.layer_bytes))
    return replace(req, layer_bytes=layers, expert_bytes=())


def _moe_layout(req: PlaceRequest, pool: _Pool) -> _Layout | None:
    """Every layer on GPUs with the experts of the fewest first layers in RAM (what
    llama.cpp users do by hand with --n-cpu-moe), if that fits the GPUs and the RAM."""
    n_max = min(len(req.expert_bytes), req.n_layer)
    if not any(req.expert_bytes[:n_max]):
        return None

    def at(n: int) -> _Layout | None:
        layout = _layout(_experts_on_cpu(req, n), pool, req.n_layer + 1)
        if layout is None:
            return None
        # RAM: the experts moved, plus a CPU compute buffer for their matmuls.
        cpu = sum(req.expert_bytes[:n]) + req.compute_bytes + req.extra_ram_bytes
        return replace(layout, cpu_bytes=cpu, n_cpu_moe=n, full=False) if cpu <= pool.cpu else None

    if at(n_max) is None:
        return None
    lo, hi = 1, n_max  # fewer layers' experts moved needs more VRAM: monotone
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    return at(lo)


def _prune(evict: Sequence[Resident], ok: Callable[[list[Resident]], bool]) -> list[Resident]:
    """Spare every eviction that is not needed: busy ones first, then the most recently used."""
    kept = list(evict)
    for r in sorted(evict, key=lambda r: (r.inflight == 0, -r.last_used)):
        trial = [e for e in kept if e is not r]
        if ok(trial):
            kept = trial
    return kept


def _plan(req: PlaceRequest, evict: Sequence[Resident], layout: _Layout) -> Plan:
    gpus = tuple(sorted(layout.per_gpu))
    return Plan(
        model=req.model,
        evict=tuple(r.model for r in evict),
        gpus=gpus,
        tensor_split=layout.split if len(gpus) > 1 else None,
        main_gpu=gpus[0] if len(gpus) == 1 else None,
        n_gpu_layers=layout.ngl,
        per_gpu_bytes=dict(layout.per_gpu),
        cpu_bytes=layout.cpu_bytes,
        fits_fully=layout.full,
        n_cpu_moe=layout.n_cpu_moe,
    )


def _search(
    req: PlaceRequest, inv: Inventory, others: Sequence[Resident], limits: Limits, fit: _Fit
) -> Plan | Wait | None:
    """The fewest, least recently used evictions that make `fit` succeed; Wait if busy
    models are among them; None if nothing unpinned can make room."""
    order = _eviction_order(others)

    def ok(evict: list[Resident]) -> bool:
        return _count_ok(others, evict, limits) and fit(_pool(inv, others, evict, limits)) is not None

    for k in range(len(order) + 1):
        if not ok(order[:k]):
            continue
        evict = _prune(order[:k], ok)
        busy = tuple(r.model for r in evict if r.inflight > 0)
        if busy:
            return Wait(req.model, busy)
        layout = fit(_pool(inv, others, evict, limits))
        assert layout is not None  # ok() just said so
        return _plan(req, evict, layout)
    return None


def _offload(req: PlaceRequest, inv: Inventory, others: Sequence[Resident], limits: Limits) -> Decision:
    """Too big for the GPUs: as many layers on them as fit (evicting idle models that help),
    the rest in system RAM. Busy models are evicted (Wait) only if max_loaded_models says so."""
    order = _eviction_order(others)
    n_idle = sum(1 for r in order if r.inflight == 0)
    # The place() pinned check guarantees evicting every unpinned model satisfies the cap.
    k = next(k for k in range(n_idle, len(order) + 1) if _count_ok(others, order[:k], limits))

    def score(evict: list[Resident]) -> tuple[int, bool]:
        pool = _pool(inv, others, evict, limits)
        layout = _best_partial(req, pool)
        return layout.ngl, layout.cpu_bytes <= pool.cpu

    best = score(order[:k])
    # Spare a model unless it buys GPU layers (or the RAM that makes the plan work).
    evict = _prune(order[:k], lambda ev: _count_ok(others, ev, limits) and score(ev) >= best)
    pool = _pool(inv, others, evict, limits)
    layout = _best_partial(req, pool)
    if layout.cpu_bytes > pool.cpu:
        reason = (
            f"model {req.model!r} does not fit: with {layout.ngl} of {req.n_layer + 1} layers on GPU "
            f"it would keep {_mib(layout.cpu_bytes)} in system RAM, but only {_mib(pool.cpu)} is available"
        )
        return NoFit(req.model, layout.cpu_bytes, pool.cpu, reason)
    busy = tuple(r.model for r in evict if r.inflight > 0)
    return Wait(req.model, busy) if busy else _plan(req, evict, layout)


# ---------------------------------------------------------------- NoFit reasons


def _gpu_label(inv: Inventory, idx: int) -> str:
    return f"GPU {idx} ({inv.gpu(idx).name})"


def _limit_note(pool: _Pool, others: Sequence[Resident], limits: Limits) -> str:
    if limits.vram_limit_bytes is None or pool.budget is None or pool.budget >= sum(pool.caps.values()):
        return ""
    pinned = sum(r.gpu_bytes for r in others if r.pinned)
    return (
        f"; the VRAM limit of {_mib(limits.vram_limit_bytes)} leaves it {_mib(pool.budget)}"
        f" ({_mib(pinned)} held by pinned models)"
    )


def _no_fit(req: PlaceRequest, inv: Inventory, others: Sequence[Resident], limits: Limits) -> NoFit:
    """Explain why the model cannot fit even with every unpinned model evicted."""
    pool = _pool(inv, others, _eviction_order(others), limits)
    pinned = [r.model for r in others if r.pinned]
    tail = " even with every unpinned model evicted"
    if pinned:
        tail += f" (pinned: {', '.join(pinned)})"
    if not inv.gpus:
        need = req.weights_bytes + req.compute_bytes
        reason = (
            f"model {req.model!r} does not fit in system RAM: it needs {_mib(need)} but only "
            f"{_mib(pool.cpu)} is available{tail}"
        )
        return NoFit(req.model, need, pool.cpu, reason)
    if req.pinned_ram_bytes > pool.cpu:
        reason = (
            f"model {req.model!r} does not fit: its own placement flags in extra_args (-ot, --cpu-moe, "
            f"--n-cpu-moe or --no-mmproj-offload) keep {_mib(req.pinned_ram_bytes)} in system RAM"
            f"{', with a CPU compute buffer,' if req.ram_bytes else ''} "
            f"but only {_mib(pool.cpu)} is available{tail}"
        )
        return NoFit(req.model, req.pinned_ram_bytes, pool.cpu, reason)
    if req.tensor_split is not None:
        needs = _user_needs(req, req.n_layer + 1, sorted(pool.caps))
        for idx, need in needs.items():
            if need > pool.caps[idx]:
                reason = (
                    f"model {req.model!r} does not fit with tensor_split {req.tensor_split}: it puts "
                    f"{_mib(need)} on {_gpu_label(inv, idx)} but only {_mib(pool.caps[idx])} is available there{tail}"
                )
                return NoFit(req.model, need, pool.caps[idx], reason)
    per_dev = req.compute_bytes + req.overhead_bytes
    n = max(1, sum(1 for c in pool.caps.values() if c > per_dev))
    need = req.gpu_weights_bytes + n * per_dev
    avail = sum(pool.caps.values())
    if pool.budget is not None:
        avail = min(avail, pool.budget)
    rooms = ", ".join(f"{_gpu_label(inv, i)}: {_mib(c)}" for i, c in sorted(pool.caps.items()))
    reason = (
        f"model {req.model!r} does not fit in GPU memory: it needs {_mib(need)} "
        f"(weights+KV {_mib(req.gpu_weights_bytes)}, plus compute {_mib(req.compute_bytes)} and overhead "
        f"{_mib(req.overhead_bytes)} on each of {n} GPU(s)) but at most {_mib(avail)} is available "
        f"({rooms}){tail}{_limit_note(pool, others, limits)}"
    )
    if need <= avail:
        reason += "; its layers cannot be divided to fit"
    if not req.allow_cpu_offload:
        reason += (
            "; CPU offload is disabled for this model (offload: strict in models.yaml;"
            " offload: auto would run part of it on the CPU)"
        )
    return NoFit(req.model, need, avail, reason)


# ---------------------------------------------------------------- entry point


def place(
    request: PlaceRequest, inventory: Inventory, residents: Sequence[Resident], limits: Limits
) -> Decision:
    """Decide how to load `request` given a snapshot, the resident models and the limits.

    `residents` are the models Guardian has loaded or is loading; one with the requested
    model's name is ignored (its memory is whatever the snapshot shows). Returns a Plan, a
    Wait (only busy models stand in the way) or a NoFit (it cannot load here at all).
    """
    _check_request(request)
    others = [r for r in residents if r.model != request.model]
    cap = limits.max_loaded_models
    pinned = [r.model for r in others if r.pinned]
    if cap > 0 and len(pinned) + 1 > cap:
        reason = (
            f"model {request.model!r} cannot load: max_loaded_models is {cap} and pinned models "
            f"({', '.join(pinned)}) already take every slot"
        )
        return NoFit(request.model, request.weights_bytes, 0, reason)
    problem = _split_problem(request, inventory) if inventory.gpus else None
    if problem is not None:
        return NoFit(request.model, request.weights_bytes, 0, f"model {request.model!r}: {problem}")

    def fit(pool: _Pool) -> _Layout | None:
        # Full fit: the whole model on GPUs, or in RAM when there are no GPUs.
        if not inventory.gpus:
            return _cpu_layout(request, pool)
        layout = _layout(request, pool, request.n_layer + 1)
        # what the user's overrides keep in RAM must fit the RAM, too
        return layout if layout is None or layout.cpu_bytes <= pool.cpu else None

    decision = _search(request, inventory, others, limits, fit)
    if decision is not None:
        return decision
    if inventory.gpus and request.allow_cpu_offload:
        if request.expert_bytes and request.tensor_split is None:
            moe = _search(request, inventory, others, limits, lambda pool: _moe_layout(request, pool))
            if moe is not None:
                return moe
        return _offload(request, inventory, others, limits)
    return _no_fit(request, inventory, others, limits)


# System RAM bandwidth for the speed estimate of an offloaded plan when none was measured
# (the planner measures it, memory/ram_bandwidth.py): a dual-channel DDR5 desktop reads
# ~50-60 GB/s.
RAM_BYTES_PER_S = 50e9


def offloaded_gen_tps(
    full_gpu_tps: float, weight_bytes: int, cpu_weight_bytes: int, ram_bytes_per_s: float = RAM_BYTES_PER_S
) -> float:
    """Expected generation speed once `cpu_weight_bytes` of the weights are read from RAM.

    Decoding reads every weight once per token, so it is bandwidth bound: the benchmark's
    full-GPU speed gives the GPU's effective bandwidth (weights x tokens/s); the part kept in
    RAM is read at `ram_bytes_per_s` instead. (MoE models read only the active experts per
    token, so for them this is a floor.)"""
    if full_gpu_tps <= 0 or weight_bytes <= 0:
        raise ValueError("full_gpu_tps and weight_bytes must be positive")
    gpu_bw = weight_bytes * full_gpu_tps
    cpu = min(max(cpu_weight_bytes, 0), weight_bytes)
    # never faster than the GPU: a slow benchmark (a tiny model, a busy GPU) can imply a GPU
    # "bandwidth" below the RAM's, which says nothing about the RAM being quicker
    return min(full_gpu_tps, 1.0 / ((weight_bytes - cpu) / gpu_bw + cpu / ram_bytes_per_s))


def cuda_env(plan: Plan) -> dict[str, str]:
    """Environment that makes llama-server see exactly the plan's GPUs, numbered as NVML
    numbers them (PCI bus order; CUDA's default is fastest first). With it, the plan's
    tensor_split lines up with the visible devices, and a single-GPU plan needs no -mg
    (the one visible device is device 0). gpus=() hides every GPU."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, plan.gpus))}
