"""What the scheduler and its collaborators agree on: the planner's answers (Go, Wait,
Refuse), the Planner protocol it asks, and the lifecycle hooks it runs around a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from guardian_supervisor.models.argv import Placement
from guardian_supervisor.models.runtime import ModelRuntime, Profile


@dataclass(frozen=True)
class Go:
    """Start the target after stopping `evict` (in order), with these launch arguments."""

    evict: tuple[str, ...] = ()
    placement: Placement = field(default_factory=Placement)
    info: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES for the plan's GPUs


@dataclass(frozen=True)
class Wait:
    """The target fits only once these busy models have drained."""

    blocked_by: tuple[str, ...]


@dataclass(frozen=True)
class Refuse:
    """The target can never fit; the message names the model and the numbers."""

    message: str
    data: dict[str, Any] = field(default_factory=dict)


PlanResult = Go | Wait | Refuse


class LifecycleHook(Protocol):
    """Work that must happen while a server is up but unavailable to requests."""

    async def model_started(self, rt: ModelRuntime) -> None:
        """Healthy, not yet READY: requests are let through only after this returns."""

    async def model_stopping(self, rt: ModelRuntime, reason: str) -> None:
        """STOPPING, no leases, server still running: the last chance to talk to it."""


class Planner(Protocol):
    async def plan(
        self, target: ModelRuntime, ctx: int, residents: list[ModelRuntime], profile: Profile = ()
    ) -> PlanResult: ...

    async def before_stop(self, rt: ModelRuntime) -> None: ...

    async def after_stop(self, stopped: ModelRuntime) -> None: ...

    def after_ready(self, rt: ModelRuntime, ctx: int) -> None: ...
