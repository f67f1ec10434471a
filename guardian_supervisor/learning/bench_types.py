"""The benchmark's vocabulary: run statuses, what it needs from the supervisor (`BenchHost`),
and when a user was last active. Kept apart so the runner reads in one sitting."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from guardian_supervisor.learning.bench_plan import Cell


class Preempted(Exception):
    """The cell cannot run right now (queue full, shutting down); try it again later."""


@dataclass(frozen=True)
class ModelFacts:
    """What a history line says about the model measured, so stale results can be told apart."""

    name: str
    context: int
    path: str
    size: int
    backend: str


@dataclass(frozen=True)
class Loaded:
    lease: str
    url: str
    ctx: int | None
    load_s: float | None
    timeout_s: float


class BenchHost(Protocol):
    """The supervisor as the benchmark sees it."""

    async def refresh_models(self) -> dict[str, ModelFacts]:
        """Re-read models.yaml (a bad file keeps the running configuration) → the models."""
        ...

    async def models(self) -> dict[str, ModelFacts]: ...

    def resolve(self, name: str) -> str:
        """Canonical model name; raises GuardianError(MODEL_NOT_FOUND)."""
        ...

    async def acquire(self, cell: Cell) -> Loaded:
        """Load the model with exactly the cell's settings (normal path) and lease it."""
        ...

    def release(self, lease: str) -> None: ...

    async def memory(self, model: str) -> dict[str, Any]: ...

    async def unload_leftovers(self) -> None:
        """Stop servers the benchmark launched that nobody uses: users get normal settings."""
        ...

    def user_busy(self) -> bool:
        """Does any user hold a lease, or wait for one, right now?"""
        ...


class UserActivity:
    """When a user was last active (monotonic): asked for a model, or still held a lease when
    someone looked. Before the first request, the start time."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, busy: Callable[[], bool] = lambda: False
    ) -> None:
        self.clock, self.busy = clock, busy
        self.last = clock()

    def note(self) -> None:
        self.last = self.clock()

    def quiet_for(self) -> float:
        if self.busy():  # a long request counts as activity until it ends, not just when it began
            self.note()
        return self.clock() - self.last


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex()


def compact(line: dict[str, Any]) -> dict[str, Any]:
    """What the state keeps of a finished cell (the history has the rest)."""
    keys = ("status", "gen_tps", "prompt_tps", "load_s", "error", "at")
    return {k: line.get(k) for k in keys}
