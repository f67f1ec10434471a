"""Per-model runtime state: one state machine per model, changed in one place.

STOPPED → STARTING → READY → STOPPING → STOPPED, or FAILED from STARTING/READY.
`set_state` is the only writer of `state`; it logs old → new with the reason and how long
the model spent in the old state.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from guardian_supervisor.models.launcher import Child
from shared.config import ModelConfig

log = structlog.get_logger("runtime")


Profile = tuple[tuple[str, int], ...]  # launch overrides, sorted: (("batch_size", 512), ...)


class State(enum.StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    READY = "READY"
    STOPPING = "STOPPING"
    FAILED = "FAILED"


ALLOWED: dict[State, set[State]] = {
    State.STOPPED: {State.STARTING},
    State.STARTING: {State.READY, State.FAILED, State.STOPPING},
    State.READY: {State.STOPPING, State.FAILED},
    State.STOPPING: {State.STOPPED, State.FAILED},
    State.FAILED: {State.STARTING, State.STOPPING, State.STOPPED},
}


# Who hears of every state change (the supervisor's metrics): (runtime, old, new, reason, wall time).
StateObserver = Callable[["ModelRuntime", State, State, str, float], None]
STATE_OBSERVERS: list[StateObserver] = []


@dataclass
class Lease:
    id: str
    model: str
    conn_id: int
    granted_at: float


@dataclass
class ModelRuntime:
    config: ModelConfig
    state: State = State.STOPPED
    since: float = field(default_factory=time.monotonic)
    reason: str = "configured"
    child: Child | None = None
    port: int | None = None
    argv: list[str] = field(default_factory=list)
    ctx: int | None = None  # context per slot the running server was started with
    profile: Profile = ()  # launch overrides it was started with (benchmarks)
    internal: bool = False  # launched for Guardian's own work (a benchmark cell), not for users
    inflight: int = 0
    last_used: float = 0.0  # monotonic; 0 = never
    last_used_wall: float = 0.0
    load_s: float | None = None
    request_timeout_s: float = 600.0  # from the size tier, worked out at launch (not per request)
    last_error: str | None = None
    last_error_tail: list[str] = field(default_factory=list)
    # Why the supervisor last killed and restarted it on its own: kept across the restart,
    # which clears last_error once the new server starts.
    last_restart: dict[str, Any] | None = None
    keep_alive_s: float | None = None  # from the last request that set it; None = model/settings default
    idle_timer: asyncio.TimerHandle | None = None
    idle_deadline_wall: float | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def resident(self) -> bool:
        """Holds (or is about to hold) memory: anything but STOPPED and FAILED-without-process."""
        return self.state in (State.STARTING, State.READY, State.STOPPING)

    def set_state(self, new: State, reason: str) -> None:
        old = self.state
        if new not in ALLOWED[old]:
            raise RuntimeError(f"model {self.name}: illegal state change {old} → {new} ({reason})")
        now = time.monotonic()
        log.info(
            "model_state",
            model=self.name,
            old=str(old),
            new=str(new),
            reason=reason,
            after_s=round(now - self.since, 3),
        )
        self.state, self.since, self.reason = new, now, reason
        for observe in STATE_OBSERVERS:
            observe(self, old, new, reason, time.time())

    def cancel_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = None
        self.idle_deadline_wall = None

    def status(self, tail_lines: int = 10) -> dict[str, Any]:
        child = self.child
        return {
            "name": self.name,
            "state": str(self.state),
            "reason": self.reason,
            "since_s": round(time.monotonic() - self.since, 3),
            "port": self.port,
            "pid": child.pid if child and child.returncode is None else None,
            "argv": self.argv,
            "ctx": self.ctx,
            "profile": dict(self.profile),
            "inflight": self.inflight,
            "last_used": self.last_used_wall or None,
            "load_s": self.load_s,
            "expires_at": self.idle_deadline_wall,
            "keep_alive_s": self.keep_alive_s,
            "last_error": self.last_error,
            "last_restart": self.last_restart,
            "log_tail": (child.tail(tail_lines) if child else []) or self.last_error_tail[-tail_lines:],
            "path": str(self.config.path),
            "backend": self.config.backend,
            "pinned": self.config.pinned,
        }
