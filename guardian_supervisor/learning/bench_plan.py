"""Pure decisions of the benchmark suite: the grid of cells, the next cell, summaries, records.

Nothing here touches files, clocks or the network, so each rule is testable alone. A *cell*
is one (model, context, batch, ubatch) combination; a *run* works through its cells in order
and remembers which are finished (by key), so a resumed run never repeats one.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ACTIVE = ("running", "paused")  # a task is (or, after a crash, was) working on the run
UNFINISHED = ("running", "paused", "stopped")  # `bench run` without --new continues these
METRICS = ("gen_tps", "prompt_tps")  # generation and prompt-processing tokens per second
METRIC_LABEL = {"gen_tps": "generation", "prompt_tps": "prompt processing"}


@dataclass(frozen=True)
class Cell:
    model: str
    ctx: int
    batch_size: int
    ubatch_size: int

    @property
    def key(self) -> str:
        return f"{self.model}|ctx={self.ctx}|b={self.batch_size}|ub={self.ubatch_size}"

    @property
    def profile(self) -> dict[str, int]:
        return {"batch_size": self.batch_size, "ubatch_size": self.ubatch_size}

    @property
    def settings(self) -> dict[str, int]:
        return {"ctx": self.ctx, **self.profile}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, **self.settings}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cell:
        return cls(str(d["model"]), int(d["ctx"]), int(d["batch_size"]), int(d["ubatch_size"]))


def grid(
    models: Mapping[str, int],
    contexts: Iterable[int],
    batch_sizes: Iterable[int],
    ubatch_sizes: Iterable[int],
) -> list[Cell]:
    """Every cell for `models` (name → configured context), model by model.

    Contexts above a model's configured context are capped to it (a model is never run with
    more than models.yaml allows), so every model gets measured at least once. A ubatch larger
    than its batch is left out: llama.cpp would clamp it, measuring another cell twice.
    """
    cells: list[Cell] = []
    ctx_list, b_list, ub_list = list(contexts), sorted(set(batch_sizes)), sorted(set(ubatch_sizes))
    for name, max_ctx in models.items():
        ctxs = sorted({min(c, max_ctx) for c in ctx_list} or {max_ctx})
        for ctx in ctxs:
            for b in b_list:
                for ub in ub_list:
                    if ub <= b:
                        cells.append(Cell(name, ctx, b, ub))
    return cells


def next_cell(cells: Sequence[Cell], done: Mapping[str, Any]) -> Cell | None:
    """The first cell not finished yet, or None when the run is complete."""
    return next((c for c in cells if c.key not in done), None)


def prompt_length(prompt_tokens: int, gen_tokens: int, ctx: int) -> int:
    """Tokens of prompt to send: as asked, but leaving room in the context for the generation."""
    return max(0, min(prompt_tokens, ctx - gen_tokens - 8))


def median(xs: Sequence[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def summarize(timings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over repetitions of llama-server's own timings (median: one slow warm-up
    repetition does not drag the figure down)."""
    prompt = [float(t["prompt_per_second"]) for t in timings if t.get("prompt_per_second")]
    gen = [float(t["predicted_per_second"]) for t in timings if t.get("predicted_per_second")]
    return {
        "prompt_tps": median(prompt),
        "gen_tps": median(gen),
        "prompt_tps_runs": [round(x, 3) for x in prompt],
        "gen_tps_runs": [round(x, 3) for x in gen],
        "prompt_n": max((int(t.get("prompt_n") or 0) for t in timings), default=0),
        "predicted_n": max((int(t.get("predicted_n") or 0) for t in timings), default=0),
    }


def detect_records(best: Mapping[str, Any] | None, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Record events for a finished cell: each metric that beats the model's best so far.

    `best` is {metric: {"value", "settings", ...}} for this model (None: nothing measured yet,
    so the first figure is a record with old None). Only strictly better figures count, so
    applying the same result twice (after a crash between writes) adds no second event.
    """
    if result.get("status") != "ok":
        return []
    events = []
    for metric in METRICS:
        new = result.get(metric)
        if new is None:
            continue
        old = (best or {}).get(metric) or {}
        if old.get("value") is None or float(new) > float(old["value"]):
            events.append(
                {
                    "model": result["model"],
                    "metric": metric,
                    "old": old.get("value"),
                    "new": new,
                    "old_settings": old.get("settings"),
                    "settings": {k: result[k] for k in ("ctx", "batch_size", "ubatch_size")},
                    "run_id": result.get("run_id"),
                    "at": result.get("at"),
                }
            )
    return events


def apply_records(records: dict[str, Any], events: Iterable[Mapping[str, Any]], keep: int = 500) -> None:
    """Fold record events into the records document {best: {model: {metric: ...}}, events: [...]}."""
    best = records.setdefault("best", {})
    log = records.setdefault("events", [])
    for e in events:
        best.setdefault(e["model"], {})[e["metric"]] = {
            "value": e["new"],
            "settings": e["settings"],
            "run_id": e.get("run_id"),
            "at": e.get("at"),
        }
        log.append(dict(e))
    del log[:-keep]


def record_message(e: Mapping[str, Any]) -> str:
    """One human line for a record: the old and new figures and the settings that won."""
    s = e["settings"]
    old = "none" if e.get("old") is None else f"{e['old']:.1f}"
    return (
        f"🏆 {e['model']}: best {METRIC_LABEL.get(e['metric'], e['metric'])} speed {old} → {e['new']:.1f} tok/s "
        f"(ctx {s['ctx']}, batch {s['batch_size']}, ubatch {s['ubatch_size']})"
    )


def run_status(st: dict[str, Any] | None, working: bool) -> dict[str, Any]:
    """What bench.status shows: progress, counts, and every cell with its figures."""
    if st is None:
        return {"status": "idle", "run_id": None, "total": 0, "done": 0, "cells": []}
    done: dict[str, Any] = st["done"]
    counts: dict[str, int] = {}
    for d in done.values():
        counts[d.get("status") or "?"] = counts.get(d.get("status") or "?", 0) + 1
    cells = []
    for c in st["cells"]:
        key = Cell.from_dict(c).key
        cells.append({**c, **(done.get(key) or {"status": "pending"})})
    status = st.get("status")
    if status in ACTIVE and not working:
        status = "interrupted"  # loaded after a restart, not resumed (yet)
    return {
        "status": status,
        "run_id": st["run_id"],
        "source": st.get("source"),
        "models": st.get("models"),
        "total": len(st["cells"]),
        "done": len(done),
        "counts": counts,
        "current": st.get("current"),
        "pause_reason": st.get("pause_reason"),
        "started_at": st.get("started_at"),
        "finished_at": st.get("finished_at"),
        "updated_at": st.get("updated_at"),
        "error": st.get("error"),
        "grid": st.get("grid"),
        "cells": cells,
    }
