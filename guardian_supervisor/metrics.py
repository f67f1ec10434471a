"""The supervisor's figures for /metrics: counters kept as events happen, and a snapshot
read over the RPC (`metrics.snapshot`) when Prometheus scrapes the proxy.

Counting is a dict increment per event (a load, a stop, a session save): nothing per token.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guardian_supervisor.models.runtime import ModelRuntime, State

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor

# Load time buckets (seconds): a tiny model loads in 50 ms, a 70B one in minutes.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_REASONS = (
    (re.compile(r"^evicted for "), "evicted"),
    (re.compile(r"^idle"), "idle"),
    (re.compile(r"^benchmark"), "benchmark"),
    (re.compile(r"^(configuration changed|removed from)"), "config"),
    (re.compile(r"shutting down"), "shutdown"),
    (re.compile(r"unload requested|keep_alive 0|^unload"), "unload"),
)


def stop_reason_kind(reason: str) -> str:
    """A stop's free-text reason as one of a few label values (bounded cardinality)."""
    for pattern, kind in _REASONS:
        if pattern.search(reason):
            return kind
    return "other"


@dataclass
class Histogram:
    """Bucket counts (not cumulative), sum and count, turned into Prometheus's shape by the proxy."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, le in enumerate(self.buckets):
            if value <= le:
                self.counts[i] += 1
                break

    def to_dict(self) -> dict[str, Any]:
        cumulative, running = [], 0
        for c in self.counts:
            running += c
            cumulative.append(running)
        return {"buckets": list(self.buckets), "cumulative": cumulative, "sum": self.sum, "count": self.count}


@dataclass
class SupervisorStats:
    loads: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    load_failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    load_seconds: dict[str, Histogram] = field(default_factory=dict)
    last_loaded_at: dict[str, float] = field(default_factory=dict)
    stops: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    session_saves: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    session_restores: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    session_restored_tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def on_state(self, rt: ModelRuntime, old: State, new: State, reason: str, wall: float) -> None:
        """Called by ModelRuntime.set_state for every change of this supervisor's runtimes."""
        if new is State.READY and old is State.STARTING:
            self.loads[rt.name] += 1
            self.last_loaded_at[rt.name] = wall
            if rt.load_s is not None:
                self.load_seconds.setdefault(rt.name, Histogram(LOAD_BUCKETS)).observe(rt.load_s)
        elif new is State.FAILED and old is State.STARTING:
            self.load_failures[rt.name] += 1
        elif new is State.STOPPING:
            self.stops[(rt.name, stop_reason_kind(reason))] += 1
        elif new is State.FAILED:
            self.stops[(rt.name, "crashed")] += 1

    def note_save(self, model: str, kind: str) -> None:
        self.session_saves[(model, kind)] += 1

    def note_restore(self, model: str, tokens: int) -> None:
        self.session_restores[model] += 1
        self.session_restored_tokens[model] += max(tokens, 0)


def _bench_figures(sup: Supervisor) -> dict[str, Any]:
    bench = sup.learning.bench
    st = bench.status()
    cells: dict[str, int] = defaultdict(int)
    for c in st.get("cells", []) or []:
        cells[str(c.get("status"))] += 1
    best = []
    for model, metrics in (bench.records.get("best") or {}).items():
        for metric, rec in metrics.items():
            if isinstance(rec, dict) and isinstance(rec.get("value"), int | float):
                best.append({"model": model, "metric": metric, "value": rec["value"]})
    return {
        "status": st.get("status"),
        "run_id": st.get("run_id"),
        "done": st.get("done", 0),
        "total": st.get("total", 0),
        "cells": dict(cells),
        "record_events": len(bench.records.get("events") or []),
        "best": best,
    }


async def snapshot(sup: Supervisor) -> dict[str, Any]:
    """Everything the proxy's collector turns into guardian_* families, in one JSON object."""
    sched, stats = sup.scheduler, sup.stats
    status = sched.status()
    models = []
    for m in status:
        name = m["name"]
        models.append(
            {
                "name": name,
                "state": m["state"],
                "inflight": m["inflight"],
                # Per-model queue figures come from the scheduler's status when it has them.
                "queued": m.get("queued", 0),
                "oldest_wait_s": m.get("oldest_wait_s", 0.0),
                "ctx": m.get("ctx"),
                "pinned": m.get("pinned", False),
                "load_s": m.get("load_s"),
                "last_loaded_at": stats.last_loaded_at.get(name),
                "loads": stats.loads.get(name, 0),
                "load_failures": stats.load_failures.get(name, 0),
                "load_seconds": stats.load_seconds[name].to_dict() if name in stats.load_seconds else None,
                "restores": stats.session_restores.get(name, 0),
                "restored_tokens": stats.session_restored_tokens.get(name, 0),
            }
        )
    return {
        "states": [str(s) for s in State],
        "models": models,
        "queued": len(sched.queue),
        "leases": len(sched.leases),
        "stops": [{"model": m, "reason": r, "count": n} for (m, r), n in stats.stops.items()],
        "session_saves": [{"model": m, "kind": k, "count": n} for (m, k), n in stats.session_saves.items()],
        "memory": await sup.planner.describe(status),
        "bench": _bench_figures(sup),
    }
