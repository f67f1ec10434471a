"""The VRAM-aware planner: estimate → GPU snapshot → placement → a launch plan.

It owns what each resident model was placed with (its bytes per GPU), and the figures
llama-server reported after each load (data/measured.json), which it prefers over the
estimate next time for the same file, context and cache type.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from guardian_supervisor.memory import placement as pl
from guardian_supervisor.memory.estimate import (
    Estimate,
    Measured,
    estimate,
    is_host_buffer,
    parse_buffer_lines,
)
from guardian_supervisor.memory.fitparams import (
    FitParams,
    FitParamsError,
    LaunchKnobs,
    Projection,
    find_binary,
    projection_of,
)
from guardian_supervisor.memory.gguf_info import GGUFError, ModelInfo, read_model_info
from guardian_supervisor.memory.gpus import GpuSource, Inventory, recovery_target, wait_for_release
from guardian_supervisor.memory.projector import (
    estimate_projector,
    ik_mtmd_ubatch,
    parse_projector_lines,
    projector_in_ram,
)
from guardian_supervisor.memory.ram_bandwidth import read_bandwidth
from guardian_supervisor.memory.tensor_overrides import PinnedToRam, parse_rules, pinned_to_ram
from guardian_supervisor.models.argv import IK_CACHE_RAM_MIB, Placement, launch_ctx, user_argv
from guardian_supervisor.models.plans import Go, PlanResult, Refuse, Wait
from guardian_supervisor.models.runtime import ModelRuntime, Profile
from shared.atomic import read_json, write_json_atomic
from shared.config import Config, ModelConfig

log = structlog.get_logger("vram")
MiB = 1 << 20


def mib(n: float) -> int:
    return round(n / MiB)


@dataclass(frozen=True)
class Placed:
    per_gpu_bytes: dict[int, int]
    cpu_bytes: int
    estimate_bytes: int
    gpus: tuple[int, ...]
    offload: dict[str, Any] | None = None  # offload_note of a plan that keeps part in RAM
    swa_full: bool = False


def measured_key(model: ModelConfig, ctx: int, swa_full: bool = False) -> str:
    st = model.path.stat()
    key = f"{model.path}|{st.st_size}|{int(st.st_mtime)}|ctx={ctx}|kv={model.kv_type}|np={model.parallel}"
    return key + ("|swa_full" if swa_full else "")  # keys without it stay what they were


def estimate_for(
    info: ModelInfo,
    model: ModelConfig,
    ctx: int,
    flavor: str,
    gpu: bool,
    overhead: int | None,
    swa_full: bool = False,
    kv_unified: bool = False,
) -> Estimate:
    flash = model.flash_attn != "off"  # llama-server's "auto" turns it on wherever it is supported
    return estimate(
        info,
        ctx=launch_ctx(model, ctx),
        kv_type=model.kv_type,
        n_parallel=model.parallel,
        n_batch=model.batch_size or 2048,
        n_ubatch=model.ubatch_size or 512,
        gpu=gpu,
        flash_attn=flash,
        flavor=flavor,
        overhead_bytes=overhead,
        host_cache_bytes=IK_CACHE_RAM_MIB * MiB if flavor == "ik" else 0,
        swa_full=swa_full,
        kv_unified=kv_unified,
    )


def with_projector(
    est: Estimate, projector_bytes: int, compute_bytes: int = 0, in_ram: bool = False
) -> Estimate:
    """Add a vision/audio projector (--mmproj): its weights and the compute buffer clip
    reserves at load for its largest image (memory/projector.py). llama-server puts both on
    the main GPU, apart from the model's layers, so they count with the non-repeating bytes.
    `in_ram` (--no-mmproj-offload on a GPU launch): they stay in system RAM, outside the VRAM
    total; the planner counts them as RAM (VramPlanner.plan)."""
    if in_ram:
        return replace(
            est, projector_bytes=projector_bytes, projector_compute_bytes=compute_bytes, projector_in_ram=True
        )
    return replace(
        est,
        nonrepeating_bytes=est.nonrepeating_bytes + projector_bytes + compute_bytes,
        weights_bytes=est.weights_bytes + projector_bytes,
        total_bytes=est.total_bytes + projector_bytes + compute_bytes,
        projector_bytes=projector_bytes,
        projector_compute_bytes=compute_bytes,
    )


def projector_vram_bytes(est: Estimate) -> int:
    """The projector's bytes inside the estimate's non-repeating (GPU) bytes."""
    return 0 if est.projector_in_ram else est.projector_bytes + est.projector_compute_bytes


def kv_unified_in(args: list[str]) -> bool:
    """Whether extra arguments ask upstream for one KV buffer shared by all slots (-kvu);
    Guardian passes -np itself, which leaves upstream's default (a stream per slot)."""
    return bool({"-kvu", "--kv-unified"} & set(args))


@dataclass(frozen=True)
class SwaChoice:
    on: bool
    reason: str
    extra_bytes: int = 0  # what the full-size cache adds over the window-sized one


def choose_swa_full(
    info: ModelInfo,
    model: ModelConfig,
    ctx: int,
    flavor: str,
    carry_over: bool,
    max_extra_bytes: int,
    kv_unified: bool = False,
) -> SwaChoice:
    """Whether upstream runs `model` with --swa-full.

    Upstream keeps only the window (+ a ubatch) of the sliding-window layers, so a slot
    restored after a swap lacks the early positions and llama-server re-reads the whole
    prompt ("forcing full prompt re-processing due to lack of cache data"). With carry-over
    on, a full-size SWA cache is what makes the restore useful, if it costs little enough."""
    if flavor == "ik":
        return SwaChoice(False, "ik_llama.cpp keeps a full-size cache on every layer")
    if not info.sliding_window or not any(info.swa_layers):
        return SwaChoice(False, "no sliding-window layers")
    full, window = (
        estimate_for(info, model, ctx, flavor, False, 0, swa_full=f, kv_unified=kv_unified).kv_bytes
        for f in (True, False)
    )
    extra = full - window
    if model.swa_full != "auto":
        return SwaChoice(model.swa_full == "on", f"swa_full: {model.swa_full} in models.yaml", extra)
    if not carry_over:
        return SwaChoice(False, "sessions.carry_over is off", extra)
    if extra > max_extra_bytes:
        return SwaChoice(
            False,
            f"a full-size sliding-window cache would add {mib(extra)} MiB "
            f"(> sessions.swa_full_max_mb {mib(max_extra_bytes)}): carry-over re-reads the prompt; "
            "set swa_full: on to pay for it",
            extra,
        )
    return SwaChoice(True, "carry-over: a restored slot needs every position", extra)


def prefer_measured(est: Estimate, meas: dict[str, Any] | None) -> Estimate:
    """Scale the estimate's parts to what llama-server reported for the same launch."""
    if not meas:
        return est

    def scale(parts: list[int], want: int) -> list[int]:
        have = sum(parts)
        return [round(p * want / have) for p in parts] if have else parts

    model_b, kv_b = int(meas.get("model_bytes", 0)), int(meas.get("kv_bytes", 0))
    layers = (
        # the projector is not in llama-server's model buffers (clip loads it on its own)
        scale(est.layer_weight_bytes, max(0, model_b - (est.nonrepeating_bytes - projector_vram_bytes(est))))
        if model_b
        else est.layer_weight_bytes
    )
    kv = scale(est.kv_per_layer, kv_b) if kv_b else est.kv_per_layer
    compute = int(meas.get("compute_bytes", 0)) or est.compute_bytes
    weights = sum(layers) + est.nonrepeating_bytes
    return replace(
        est,
        layer_weight_bytes=layers,
        weights_bytes=weights,
        kv_per_layer=kv,
        kv_bytes=sum(kv),
        compute_bytes=compute,
        # The host prompt cache fills later, so no buffer line measures it: keep the cap.
        total_bytes=weights
        + sum(kv)
        + compute
        + est.output_bytes
        + est.overhead_bytes
        + est.host_cache_bytes,
    )


_EXPERT_RE = re.compile(r"blk\.(\d+)\.ffn_\w*_exps\.")


def expert_bytes(info: ModelInfo) -> tuple[int, ...]:
    """Bytes of each layer's MoE expert tensors (blk.N.ffn_{gate,up,down,gate_up}_exps); () if none."""
    per = [0] * info.n_layer
    for t in info.tensors:
        if (m := _EXPERT_RE.match(t.name)) and int(m[1]) < len(per):
            per[int(m[1])] += t.n_bytes
    return tuple(per) if any(per) else ()


def ram_pinned_request(req: pl.PlaceRequest, pinned: PinnedToRam) -> pl.PlaceRequest:
    """`req` with the weights the user's own tensor overrides keep in RAM taken off the
    layers (and off the experts Guardian could move itself) and counted as RAM."""
    if not pinned.total:
        return req
    n = len(req.layer_bytes)
    moved = [
        min(pinned.per_layer[i] if i < len(pinned.per_layer) else 0, b) for i, b in enumerate(req.layer_bytes)
    ]
    other = min(pinned.other, req.nonrepeating_bytes)
    experts = tuple(max(e - (moved[i] if i < n else 0), 0) for i, e in enumerate(req.expert_bytes))
    return replace(
        req,
        layer_bytes=tuple(b - m for b, m in zip(req.layer_bytes, moved, strict=True)),
        nonrepeating_bytes=req.nonrepeating_bytes - other,
        expert_bytes=experts if any(experts) else (),
        ram_bytes=sum(moved) + other,
    )


def offload_note(
    plan: pl.Plan,
    n_layer: int,
    weight_bytes: int,
    best_gen_tps: float | None = None,
    ram_bytes_per_s: float = pl.RAM_BYTES_PER_S,
) -> dict[str, Any]:
    """What an offloaded plan keeps in RAM and, with a benchmark record of the model's
    generation speed, the speed to expect (placement.offloaded_gen_tps) when RAM is read at
    `ram_bytes_per_s`."""
    if plan.n_cpu_moe:
        how = f"experts of the first {plan.n_cpu_moe} of {n_layer} layers in system RAM (--n-cpu-moe)"
    else:
        how = f"{plan.n_gpu_layers} of {n_layer + 1} layers on GPU, the rest in system RAM (-ngl)"
    note: dict[str, Any] = {
        "how": how,
        "ngl": plan.n_gpu_layers,
        "n_cpu_moe": plan.n_cpu_moe,
        "cpu_mib": mib(plan.cpu_bytes),
    }
    if best_gen_tps and weight_bytes > 0:
        tps = pl.offloaded_gen_tps(best_gen_tps, weight_bytes, plan.cpu_bytes, ram_bytes_per_s)
        note["benchmark_gen_tps"] = round(best_gen_tps, 1)
        note["ram_gbs"] = round(ram_bytes_per_s / 1e9, 1)
        note["expected_gen_tps"] = round(tps, 1)
        note["expected_slowdown"] = round(best_gen_tps / tps, 1)
    else:
        note["expected_gen_tps"] = None  # no benchmark record for this model yet
    return note


def knobs_for(model: ModelConfig, ctx: int, swa_full: bool = False, kv_unified: bool = False) -> LaunchKnobs:
    """The memory-relevant launch settings, as build_argv passes them to llama-server."""
    return LaunchKnobs(
        ctx=launch_ctx(model, ctx),
        n_parallel=model.parallel,
        kv_type=model.kv_type,
        n_batch=model.batch_size or 2048,
        n_ubatch=model.ubatch_size or 512,
        flash_attn=model.flash_attn,
        ngl=model.ngl,
        swa_full=swa_full,
        kv_unified=kv_unified,
    )


@dataclass(frozen=True)
class Sources:
    """Every figure there is for one launch, and which one planning uses.

    source: "measured" (llama-server's buffer lines from an earlier load), "fit-params"
    (llama.cpp's projection; upstream flavor only) or "estimator" (the GGUF estimate)."""

    estimate: Estimate
    used: Estimate
    source: str
    measured: dict[str, Any] | None
    projection: Projection | None
    fit_error: str | None = None
    swa: SwaChoice = SwaChoice(False, "no sliding-window layers")


class VramPlanner:
    """Implements scheduler.Planner with estimates, a GPU source and pure placement."""

    def __init__(
        self, config: Callable[[], Config], source: GpuSource, own_pids: Callable[[], list[int]]
    ) -> None:
        self._config = config
        self.source = source
        self._own_pids = own_pids
        self.placed: dict[str, Placed] = {}
        self._before_stop: dict[str, Inventory] = {}  # NVML snapshot taken just before a stop
        self._info: dict[tuple[str, float], ModelInfo] = {}
        self._measured: dict[str, Any] | None = None
        self._saving: set[asyncio.Task[None]] = set()  # the loop keeps only weak task references
        self._fit: FitParams | None = None
        self.fit_binary: str | bool | None = False  # False: not looked up yet
        self._ram_bw: float | None = None  # measured RAM read bytes/s (ram_bandwidth)

    async def fitparams(self) -> FitParams:
        if self._fit is None:
            if self.fit_binary is False:
                self.fit_binary = await asyncio.to_thread(find_binary)
            binary = self.fit_binary if isinstance(self.fit_binary, str) else None
            self._fit = FitParams(self.config.data_dir / "fitparams.json", binary)
        return self._fit

    @property
    def config(self) -> Config:
        return self._config()

    @property
    def measured_path(self) -> Path:
        return self.config.data_dir / "measured.json"

    async def info(self, model: ModelConfig) -> ModelInfo:
        return await self._file_info(model.path)

    async def _file_info(self, path: Path) -> ModelInfo:
        key = (str(path), (await asyncio.to_thread(path.stat)).st_mtime)
        if key not in self._info:
            self._info[key] = await asyncio.to_thread(read_model_info, path)
        return self._info[key]

    async def measured(self) -> dict[str, Any]:
        if self._measured is None:
            self._measured = await asyncio.to_thread(read_json, self.measured_path, {}) or {}
        return self._measured

    async def snapshot(self) -> Inventory:
        own_usage: dict[int, int] = {}
        for p in self.placed.values():
            for gpu, b in p.per_gpu_bytes.items():
                own_usage[gpu] = own_usage.get(gpu, 0) + b
        return await self.source.snapshot(self._own_pids(), own_usage)

    async def estimate(
        self, model: ModelConfig, ctx: int
    ) -> tuple[Estimate, Estimate, dict[str, Any] | None]:
        """(estimate from the file, the figure used for planning, the measured record or None)."""
        src = await self.sources(model, ctx)
        return src.estimate, src.used, src.measured

    async def sources(self, model: ModelConfig, ctx: int, for_planning: bool = True) -> Sources:
        """The estimate, llama.cpp's projection (upstream flavor) and the measured record.

        Measured wins, then fit-params, then the estimator. A measured model never runs
        llama-fit-params, and a cached projection costs a dict lookup; only a launch seen for
        the first time waits for one run (< 2 s, bounded by a timeout). With simulated GPUs
        the projection is not used for planning, so only `for_planning=False` runs it."""
        info = await self.info(model)
        inv = await self.snapshot()
        gpu = bool(inv.gpus)
        backend = self.config.backend_of(model)
        overhead_mb = self.config.settings.gpus.overhead_mb
        overhead = (overhead_mb * MiB if overhead_mb is not None else None) if gpu else 0
        s = self.config.settings.sessions
        unified = backend.flavor == "upstream" and kv_unified_in(user_argv(model, backend))
        swa = choose_swa_full(
            info, model, ctx, backend.flavor, s.carry_over, s.swa_full_max_mb * MiB, unified
        )
        sized = model  # the launch as the server sizes it: ik with --mmproj runs -ub = -b
        if model.mmproj is not None and backend.flavor == "ik":
            ub = ik_mtmd_ubatch(launch_ctx(model, ctx), model.batch_size or 2048, model.ubatch_size or 512)
            sized = replace(model, ubatch_size=ub)
        est = estimate_for(
            info, sized, ctx, backend.flavor, gpu, overhead, swa_full=swa.on, kv_unified=unified
        )
        if model.mmproj is not None:
            mmproj = estimate_projector(
                await self._file_info(model.mmproj),
                flavor=backend.flavor,
                flash_attn=model.flash_attn != "off",
            )
            in_ram = gpu and projector_in_ram(user_argv(model, backend))
            est = with_projector(est, mmproj.weights_bytes, mmproj.compute_bytes, in_ram)
        meas = (await self.measured()).get(await asyncio.to_thread(measured_key, model, ctx, swa.on))
        proj, fit_error = None, None
        if backend.flavor == "upstream":
            knobs = knobs_for(model, ctx, swa.on, unified)
            fp = await self.fitparams()
            try:
                run = not meas and not (for_planning and inv.mode == "simulated")
                rec = await (fp.project if run else fp.cached)(model.path, knobs)
                if rec is not None:
                    proj = projection_of(
                        rec, n_vocab=info.n_vocab, knobs=knobs, cells=est.ctx, floor_compute=est.compute_bytes
                    )
            except FitParamsError as e:
                fit_error = str(e)
                log.warning("fitparams_failed", model=model.name, error=fit_error)
        # A simulated GPU is served by a CPU build: its host buffers (and llama.cpp's host
        # projection) say nothing about VRAM.
        if inv.mode == "simulated":
            return Sources(est, est, "estimator", meas, proj, fit_error, swa)
        if meas:
            return Sources(est, prefer_measured(est, meas), "measured", meas, proj, fit_error, swa)
        if proj is not None:
            return Sources(est, prefer_measured(est, proj.record()), "fit-params", meas, proj, fit_error, swa)
        return Sources(est, est, "estimator", meas, proj, fit_error, swa)

    async def plan(
        self,
        target: ModelRuntime,
        ctx: int,
        residents: list[ModelRuntime],
        profile: Profile = (),
    ) -> PlanResult:
        overrides: dict[str, Any] = dict(profile)
        model = replace(target.config, **overrides)  # batch sizes change the compute buffer
        try:
            src = await self.sources(model, ctx)
        except (GGUFError, OSError) as e:
            return Refuse(f"model '{model.name}': cannot read {model.path}: {e}")
        use, swa = src.used, src.swa
        inv = await self.snapshot()
        s = self.config.settings
        vram_limit = s.proxy.vram_limit_mb * MiB if s.proxy.vram_limit_mb else None
        gguf = await self.info(model)
        backend = self.config.backend_of(model)
        pinned = pinned_to_ram(gguf, parse_rules(user_argv(model, backend)))
        request = ram_pinned_request(
            pl.PlaceRequest(
                model=model.name,
                layer_bytes=tuple(use.per_layer_bytes),
                nonrepeating_bytes=use.nonrepeating_bytes + use.output_bytes,
                compute_bytes=use.compute_bytes,
                overhead_bytes=use.overhead_bytes,
                tensor_split=model.split,
                allow_cpu_offload=model.cpu_offload or model.offload == "auto",
                expert_bytes=expert_bytes(gguf),
            ),
            pinned,
        )
        if use.projector_in_ram:  # --no-mmproj-offload: the projector's bytes are RAM
            request = replace(request, ram_side_bytes=use.projector_bytes + use.projector_compute_bytes)
        others = []
        for r in residents:
            p = self.placed.get(r.name)
            others.append(
                pl.Resident(
                    model=r.name,
                    per_gpu_bytes=p.per_gpu_bytes if p else {},
                    inflight=r.inflight,
                    pinned=r.config.pinned,
                    last_used=r.last_used,
                    cpu_bytes=p.cpu_bytes if p else 0,
                )
            )
        limits = pl.Limits(vram_limit, s.gpus.reserve_mb * MiB if inv.gpus else 0, s.max_loaded_models)
        decision = pl.place(request, inv, others, limits)
        if isinstance(decision, pl.Wait):
            return Wait(decision.blocked_by)
        if isinstance(decision, pl.NoFit):
            where = "VRAM" if inv.gpus else "system RAM"
            return Refuse(
                f"model '{model.name}' does not fit: it needs {mib(decision.needed_bytes)} MiB of {where} "
                f"but {mib(decision.available_bytes)} MiB are available ({decision.reason})",
                {"needed_mib": mib(decision.needed_bytes), "available_mib": mib(decision.available_bytes)},
            )

        env = pl.cuda_env(decision) if inv.mode == "nvml" else {}
        placement = Placement(
            n_gpu_layers=decision.n_gpu_layers,
            tensor_split=decision.tensor_split,
            n_cpu_moe=decision.n_cpu_moe,
            swa_full=swa.on,
        )
        info: dict[str, Any] = {
            "gpus": list(decision.gpus),
            "per_gpu_mib": {str(k): mib(v) for k, v in decision.per_gpu_bytes.items()},
        }
        # the user's -ot/--n-cpu-moe/--no-mmproj-offload: say what stays in RAM
        if request.extra_ram_bytes and inv.gpus:
            info["ram_by_extra_args_mib"] = mib(request.extra_ram_bytes)
        # Recorded before any await: a plan made meanwhile must see this model's bytes.
        self.placed[model.name] = Placed(
            dict(decision.per_gpu_bytes), decision.cpu_bytes, use.total_bytes, decision.gpus, swa_full=swa.on
        )
        if inv.gpus and not decision.fits_fully:
            best = await self.best_gen_tps(model.name)
            note = offload_note(
                decision,
                len(request.layer_bytes),
                use.weights_bytes,
                best,
                await self.ram_bandwidth() if best else pl.RAM_BYTES_PER_S,
            )
            info["offload"] = note
            if model.name in self.placed:
                self.placed[model.name] = replace(self.placed[model.name], offload=note)
            log.warning("offloaded", model=model.name, **note)
        if swa.extra_bytes:  # a sliding-window model: say which cache it gets, and why
            info["swa_full"] = swa.on
            log.info(
                "swa_cache",
                model=model.name,
                swa_full=swa.on,
                extra_mib=mib(swa.extra_bytes),
                reason=swa.reason,
            )
        log.info("placed", model=model.name, ctx=ctx, evict=decision.evict, **info, ngl=decision.n_gpu_layers)
        return Go(evict=decision.evict, placement=placement, info=info, env=env)

    async def ram_bandwidth(self) -> float:
        """RAM read bytes/s for the offload speed: gpus.ram_gbs, else measured once (0.2-1.5 s,
        in a thread) and kept for the life of the process."""
        if (gbs := self.config.settings.gpus.ram_gbs) is not None:
            return gbs * 1e9
        if self._ram_bw is None:
            self._ram_bw = await asyncio.to_thread(read_bandwidth)
            log.info("ram_bandwidth", gbs=round(self._ram_bw / 1e9, 1))
        return self._ram_bw

    async def best_gen_tps(self, model: str) -> float | None:
        """The model's best generation speed from the benchmark records, if any."""
        records = await asyncio.to_thread(read_json, self.config.data_dir / "benchmark_records.json", {})
        best = ((records or {}).get("best", {}).get(model) or {}).get("gen_tps") or {}
        value = best.get("value")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    async def before_stop(self, rt: ModelRuntime) -> None:
        """On real GPUs, note free memory while the server still holds it: the baseline the
        wait after the stop measures recovery against."""
        placed = self.placed.get(rt.name)
        if placed is not None and placed.gpus:
            inv = await self.snapshot()
            if inv.mode == "nvml":
                self._before_stop[rt.name] = inv

    async def after_stop(self, stopped: ModelRuntime) -> None:
        """Forget the placement; on real GPUs wait (bounded) until NVML shows the memory back."""
        placed = self.placed.pop(stopped.name, None)
        baseline = self._before_stop.pop(stopped.name, None)
        if placed is None or not placed.gpus or baseline is None:
            return  # not on real GPUs, or the server was already gone (nothing to wait for)
        held = sum(placed.per_gpu_bytes.values())
        target = recovery_target(baseline, placed.gpus, held)
        ok = await wait_for_release(
            self.source,
            placed.gpus,
            target,
            timeout_s=self.config.settings.gpus.release_timeout_s,
            own_pids=self._own_pids(),
        )
        if not ok:
            log.warning("vram_release_slow", model=stopped.name, gpus=placed.gpus)

    def after_ready(self, rt: ModelRuntime, ctx: int) -> None:
        """Record what llama-server reported allocating, for next time."""
        if rt.child is None:
            return
        # A copy under the ring's lock: the reader thread keeps appending while we parse.
        tail = rt.child.tail(rt.child.lines.maxlen or 200)
        meas: Measured = parse_buffer_lines(tail)
        if meas.source == "none":
            return
        proj = parse_projector_lines(tail) if rt.config.mmproj is not None else None
        proj_bytes = proj.total_bytes if proj else 0
        record = {
            "model_bytes": meas.model_bytes,
            "kv_bytes": meas.kv_bytes,
            "compute_bytes": meas.compute_bytes,
            "output_bytes": meas.output_bytes,
            # clip's weights and warm-up buffer, apart from the text model's (0: no projector)
            "projector_bytes": proj_bytes,
            "total_bytes": meas.total_bytes + proj_bytes,
            "vram_bytes": sum(d.total for n, d in meas.per_device.items() if not is_host_buffer(n)),
            "source": meas.source,
            "at": time.time(),
        }
        swa_full = "--swa-full" in rt.argv  # what this server ran with: part of the record's key
        task = asyncio.get_running_loop().create_task(self._save_measured(rt.config, ctx, swa_full, record))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def _save_measured(
        self, model: ModelConfig, ctx: int, swa_full: bool, record: dict[str, Any]
    ) -> None:
        store = await self.measured()
        key = await asyncio.to_thread(measured_key, model, ctx, swa_full)
        store[key] = record
        await asyncio.to_thread(write_json_atomic, self.measured_path, store)

    async def describe(self, status: list[dict[str, Any]]) -> dict[str, Any]:
        """Per GPU: total, free, and bytes held by each resident model (estimate vs measured)."""
        inv = await self.snapshot()
        measured = await self.measured()
        by_model: dict[str, Any] = {}
        for m in status:
            p = self.placed.get(m["name"])
            if p is None:
                continue
            cfg = self.config.models.get(m["name"])
            meas = (
                measured.get(await asyncio.to_thread(measured_key, cfg, m["ctx"], p.swa_full))
                if cfg and m["ctx"]
                else None
            )
            by_model[m["name"]] = {
                "gpus": list(p.gpus),
                "per_gpu_mib": {str(k): mib(v) for k, v in p.per_gpu_bytes.items()},
                "cpu_mib": mib(p.cpu_bytes),
                "estimate_mib": mib(p.estimate_bytes),
                "measured_mib": mib(meas["total_bytes"]) if meas else None,
                "offload": p.offload,
            }
        gpus = [
            {
                "index": g.index,
                "name": g.name,
                "total_mib": mib(g.total_bytes),
                "free_mib": mib(g.free_bytes),
                "used_mib": mib(g.used_bytes),
                "other_mib": mib(g.other_bytes),
                "models": {
                    n: v["per_gpu_mib"].get(str(g.index), 0)
                    for n, v in by_model.items()
                    if str(g.index) in v["per_gpu_mib"]
                },
            }
            for g in inv.gpus
        ]
        return {
            "mode": inv.mode,
            "gpus": gpus,
            "cpu": {"total_mib": mib(inv.cpu_total_bytes), "available_mib": mib(inv.cpu_available_bytes)},
            "placements": by_model,
        }


def own_pids_of(runtimes: dict[str, ModelRuntime]) -> list[int]:
    pids = [os.getpid()]
    for rt in runtimes.values():
        if rt.child is not None and rt.child.pid is not None and rt.child.returncode is None:
            pids.append(rt.child.pid)
    return pids
