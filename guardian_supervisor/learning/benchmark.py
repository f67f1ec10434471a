"""The benchmark suite: measure every configured model over a grid of launch settings.

A run is a list of cells (bench_plan.grid) worked through one at a time. Each cell loads the
model through the scheduler's normal path (VRAM planning, eviction, refusal), measures it
with llama-server's own timings, and is finished for good once its history line is written,
whatever the outcome (a cell that does not fit is recorded as such, never retried). Progress
lives in data/benchmark_state.json, so a killed or restarted supervisor continues with the
next unfinished cell.

Users win: a user request (scheduler.on_acquire with is_user) cancels the cell being
measured, which releases its lease at once; the run pauses and continues once nobody has
asked for anything for benchmark.idle_minutes. The interrupted cell is measured again from
scratch (an unfinished cell has no result to lose).

The supervisor-facing effects sit behind `BenchHost`; files behind `BenchStore`; HTTP behind
`Measurer`. The runner itself only sequences them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from guardian_supervisor.learning.bench_measure import MeasureError, Measurer
from guardian_supervisor.learning.bench_plan import (
    ACTIVE,
    UNFINISHED,
    Cell,
    apply_records,
    detect_records,
    grid,
    next_cell,
    prompt_length,
    record_message,
    run_status,
    summarize,
)
from guardian_supervisor.learning.bench_store import BenchStore
from guardian_supervisor.learning.bench_types import (
    BenchHost,
    Loaded,
    ModelFacts,
    Preempted,
    UserActivity,
    compact,
    new_run_id,
)
from shared.config import BenchmarkSettings
from shared.errors import Code, GuardianError

log = structlog.get_logger("benchmark")


class Benchmark:
    def __init__(
        self,
        host: BenchHost,
        store: BenchStore,
        settings: Callable[[], BenchmarkSettings],
        measurer: Measurer,
        activity: UserActivity,
    ) -> None:
        self.host, self.store, self.settings = host, store, settings
        self.measurer, self.activity = measurer, activity
        self.state: dict[str, Any] | None = None
        self.records: dict[str, Any] = {"best": {}, "events": []}
        self.on_end: list[Callable[[dict[str, Any]], None]] = []  # finished, failed or stopped
        self.on_cell: list[Callable[[dict[str, Any]], None]] = []  # a history line was written
        self._task: asyncio.Task[None] | None = None
        self._cell_task: asyncio.Task[dict[str, Any]] | None = None
        self._preempted = False
        self._quiet_needed = False  # a user came by: wait for idle_minutes of quiet

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def interrupted_source(self) -> str | None:
        """The source of a run that was working when the supervisor last went away."""
        st = self.state
        return str(st.get("source")) if st and st.get("status") in ACTIVE and not self.active else None

    async def load(self) -> None:
        """Read the state and records; fold in history lines written just before a crash."""
        self.state = await asyncio.to_thread(self.store.load_state)
        self.records = await asyncio.to_thread(self.store.load_records)
        st = self.state
        if not st or st.get("status") not in UNFINISHED:
            return
        lines = await asyncio.to_thread(self.store.read_history, st["run_id"])
        changed = False
        for line in lines:
            key = Cell.from_dict(line).key
            if key not in st["done"]:
                st["done"][key] = compact(line)
                self._fold_records(line)
                changed = True
        if changed:
            log.info("benchmark_reconciled", run_id=st["run_id"], done=len(st["done"]))
            await asyncio.to_thread(self.store.save_records, self.records)
            await self._save()

    def resume(self) -> None:
        """Continue an interrupted run once the box has been quiet for idle_minutes."""
        if self.state is None or self.active:
            return
        log.info("benchmark_resuming", run_id=self.state["run_id"], done=len(self.state["done"]))
        self._quiet_needed = True
        self._task = asyncio.create_task(self._run())

    async def start(self, models: list[str] | None, source: str, new: bool = False) -> dict[str, Any]:
        """Start a run over `models` (None: all), or continue the unfinished one with the
        same selection unless `new`."""
        known = await self.host.refresh_models()
        selection = sorted({self.host.resolve(m) for m in models}) if models else None
        st = self.state
        if self.active:
            assert st is not None
            if st.get("models") == selection:
                return self.status()
            raise GuardianError(
                Code.CONFLICT,
                f"benchmark run {st['run_id']} is in progress; 'guardianctl bench stop' it first",
            )
        if not new and st and st.get("status") in UNFINISHED and st.get("models") == selection:
            st.update(source=source, status="running", error=None)
            log.info(
                "benchmark_continuing", run_id=st["run_id"], done=len(st["done"]), total=len(st["cells"])
            )
        else:
            s = self.settings()
            names = selection or list(known)
            cells = grid(
                {n: known[n].context for n in names if n in known},
                s.contexts,
                s.batch_sizes,
                s.ubatch_sizes,
            )
            st = self.state = {
                "run_id": new_run_id(),
                "source": source,
                "models": selection,
                "status": "running",
                "cells": [c.to_dict() for c in cells],
                "done": {},
                "current": None,
                "started_at": time.time(),
                "finished_at": None,
                "pause_reason": None,
                "error": None,
                "grid": {
                    "prompt_tokens": s.prompt_tokens,
                    "gen_tokens": s.gen_tokens,
                    "repetitions": s.repetitions,
                },
            }
            log.info("benchmark_started", run_id=st["run_id"], source=source, cells=len(cells), models=names)
        await self._save()
        self._quiet_needed = False  # asked for now: only a user holding a lease makes it wait
        self._task = asyncio.create_task(self._run())
        return self.status()

    async def stop(self, reason: str = "stopped by hand") -> dict[str, Any]:
        if not self.active:
            return self.status()
        await self._cancel()
        assert self.state is not None
        self.state.update(status="stopped", current=None, pause_reason=None, error=reason)
        await self._save()
        log.info("benchmark_stopped", run_id=self.state["run_id"], reason=reason)
        await self.host.unload_leftovers()
        self._ended()
        return self.status()

    async def close(self) -> None:
        """Supervisor shutdown: stop working but keep the run's status, so it resumes."""
        await self._cancel()

    async def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def note_acquire(self, model: str, user: bool) -> None:
        """scheduler.on_acquire: a user request pauses the run and frees its lease now."""
        if not user:
            return
        self.activity.note()
        if self.active:
            self._quiet_needed = True
        task = self._cell_task
        if task is not None and not task.done():
            self._preempted = True
            task.cancel()

    # ---- the run ------------------------------------------------------------------------

    async def _run(self) -> None:
        st = self.state
        assert st is not None
        cells = [Cell.from_dict(c) for c in st["cells"]]
        try:
            while (cell := next_cell(cells, st["done"])) is not None:
                await self._wait_until_idle()
                st.update(status="running", current=cell.to_dict(), pause_reason=None)
                await self._save()
                line = await self._run_cell(cell)
                if line is not None:
                    await self._finish_cell(cell, line)
            st.update(status="finished", current=None, finished_at=time.time())
            await self._save()
            ok = sum(1 for d in st["done"].values() if d.get("status") == "ok")
            log.info("benchmark_finished", run_id=st["run_id"], cells=len(cells), ok=ok)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not leave the run "running" forever
            log.exception("benchmark_failed", run_id=st["run_id"])
            st.update(status="failed", current=None, error=str(e))
            await self._save()
        await self.host.unload_leftovers()
        self._task = None
        self._ended()

    async def _wait_until_idle(self) -> None:
        st = self.state
        assert st is not None
        while True:
            busy = self.host.user_busy()
            need = self.settings().idle_minutes * 60
            quiet = self.activity.quiet_for()
            if not busy and (not self._quiet_needed or quiet >= need):
                self._quiet_needed = False
                return
            if st.get("status") != "paused":
                st.update(status="paused", current=None, pause_reason="a user is using Guardian")
                await self._save()
                log.info("benchmark_paused", run_id=st["run_id"], resume_after_quiet_s=need)
                await self.host.unload_leftovers()
            await asyncio.sleep(0.25 if busy else min(max(need - quiet, 0.05), 1.0))

    async def _run_cell(self, cell: Cell) -> dict[str, Any] | None:
        """The cell's history line, or None if it was interrupted (it stays unfinished)."""
        self._preempted = False
        task = asyncio.create_task(self._measure(cell))
        self._cell_task = task
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._preempted and me is not None and not me.cancelling():
                log.info("benchmark_preempted", cell=cell.key, reason="a user request arrived")
                self._quiet_needed = True
                return None
            raise
        except Preempted as e:
            log.info("benchmark_cell_deferred", cell=cell.key, reason=str(e))
            await asyncio.sleep(1.0)
            return None
        finally:
            self._cell_task = None

    async def _measure(self, cell: Cell) -> dict[str, Any]:
        s = self.settings()
        facts = (await self.host.models()).get(cell.model)
        if facts is None:
            return self._line(cell, None, "skipped", error="the model is no longer in models.yaml")
        if cell.ctx > facts.context:
            return self._line(cell, facts, "skipped", error=f"above the configured context {facts.context}")
        n_prompt = prompt_length(s.prompt_tokens, s.gen_tokens, cell.ctx)
        if n_prompt < 1:
            return self._line(cell, facts, "skipped", error=f"context {cell.ctx} leaves no room for a prompt")
        try:
            loaded = await self.host.acquire(cell)
        except GuardianError as e:
            if e.code in (Code.QUEUE_FULL, Code.SHUTTING_DOWN):
                raise Preempted(e.message) from e
            status = {Code.DOES_NOT_FIT: "does_not_fit", Code.MODEL_NOT_FOUND: "skipped"}.get(
                e.code, "failed"
            )
            return self._line(cell, facts, status, error=e.message, detail=e.data)
        try:
            ids = await self.measurer.prompt(loaded.url, n_prompt, loaded.timeout_s)
            timings = [
                await self.measurer.complete(loaded.url, ids, s.gen_tokens, loaded.timeout_s)
                for _ in range(max(1, s.repetitions))
            ]
            memory = await self.host.memory(cell.model)
            used = {int(t["id_slot"]) for t in timings if isinstance(t.get("id_slot"), int)}
            await self.measurer.forget(loaded.url, used, loaded.timeout_s)
        except (aiohttp.ClientError, TimeoutError, MeasureError) as e:
            return self._line(cell, facts, "failed", loaded, error=f"measuring failed: {e}")
        finally:
            self.host.release(loaded.lease)
        return self._line(
            cell,
            facts,
            "ok",
            loaded,
            memory=memory,
            prompt_tokens=n_prompt,
            gen_tokens=s.gen_tokens,
            repetitions=len(timings),
            **summarize(timings),
        )

    def _line(
        self,
        cell: Cell,
        facts: ModelFacts | None,
        status: str,
        loaded: Loaded | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        assert self.state is not None
        return {
            "run_id": self.state["run_id"],
            "at": time.time(),
            **cell.to_dict(),
            "status": status,
            "path": facts.path if facts else None,
            "size": facts.size if facts else None,
            "backend": facts.backend if facts else None,
            "load_s": round(loaded.load_s, 3) if loaded and loaded.load_s is not None else None,
            "error": None,
            **extra,
        }

    async def _finish_cell(self, cell: Cell, line: dict[str, Any]) -> None:
        # Order matters for crash safety: history (the truth), then records, then state.
        await asyncio.to_thread(self.store.append_history, line)
        if self._fold_records(line):
            await asyncio.to_thread(self.store.save_records, self.records)
        assert self.state is not None
        self.state["done"][cell.key] = compact(line)
        self.state["current"] = None
        await self._save()
        log.info(
            "benchmark_cell",
            cell=cell.key,
            status=line["status"],
            gen_tps=line.get("gen_tps"),
            prompt_tps=line.get("prompt_tps"),
            load_s=line.get("load_s"),
            error=line.get("error"),
        )
        for cb in self.on_cell:
            cb(line)

    def _fold_records(self, line: dict[str, Any]) -> bool:
        events = detect_records(self.records["best"].get(line["model"]), line)
        apply_records(self.records, events)
        for e in events:
            log.info(
                record_message(e),
                model=e["model"],
                metric=e["metric"],
                old=e["old"],
                new=e["new"],
                settings=e["settings"],
            )
        return bool(events)

    def _ended(self) -> None:
        for cb in self.on_end:
            try:
                cb(self.status())
            except Exception:  # one listener's bug does not hide the end from the others
                log.exception("benchmark_end_listener_failed")

    async def _save(self) -> None:
        if self.state is not None:
            self.state["updated_at"] = time.time()
            snapshot = {**self.state, "done": dict(self.state["done"])}  # the thread sees one version
            await asyncio.to_thread(self.store.save_state, snapshot)

    # ---- what the RPC shows -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return run_status(self.state, self.active)

    def records_view(self, model: str | None = None, limit: int = 50) -> dict[str, Any]:
        best = self.records.get("best", {})
        events = self.records.get("events", [])
        if model is not None:
            best = {model: best[model]} if model in best else {}
            events = [e for e in events if e.get("model") == model]
        return {"best": best, "events": events[-limit:]}
