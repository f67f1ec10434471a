"""guardian-supervisor: owns configuration, llama-server children and the admin RPC."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from typing import Any

import click
import structlog

from guardian_supervisor.learning.wiring import Learning
from guardian_supervisor.memory.gpus import GpuSource, make_source
from guardian_supervisor.memory.planner import VramPlanner, own_pids_of
from guardian_supervisor.metrics import SupervisorStats
from guardian_supervisor.models.runtime import STATE_OBSERVERS, ModelRuntime, State
from guardian_supervisor.models.scheduler import Scheduler
from guardian_supervisor.rpc import bench as bench_methods
from guardian_supervisor.rpc import catalog as catalog_methods
from guardian_supervisor.rpc import config as config_methods
from guardian_supervisor.rpc import keys as key_methods
from guardian_supervisor.rpc import maintenance as maintenance_methods
from guardian_supervisor.rpc import metrics as metrics_methods
from guardian_supervisor.rpc import models as model_methods
from guardian_supervisor.rpc import optimizer as optimizer_methods
from guardian_supervisor.rpc import sessions as session_methods
from guardian_supervisor.rpc.server import Connection, RpcServer
from guardian_supervisor.sessions.manager import SessionManager
from shared.config import Config, load_config
from shared.errors import Code, GuardianError
from shared.foreground import config_dir_option, log_level_option, run_foreground
from shared.rpc import READ_ONLY_METHODS
from shared.yamlschema import ConfigError

log = structlog.get_logger("supervisor")


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())


def gpu_source(config: Config) -> GpuSource:
    g = config.settings.gpus
    specs = [{"name": x.name, "total_mb": x.total_mb, "used_mb": x.used_mb} for x in g.simulated]
    return make_source(g.mode, specs)


class Supervisor:
    def __init__(self, config: Config, source: GpuSource) -> None:
        self.config = config
        self.pid = os.getpid()
        self.planner = VramPlanner(lambda: self.config, source, lambda: own_pids_of(self.scheduler.runtimes))
        self.scheduler = Scheduler(config, self.planner)
        self.pins: dict[str, bool] = {}  # set at run time (dashboard, RPC models.pin)
        self.stats = SupervisorStats()  # figures for the proxy's /metrics
        self.sessions = SessionManager(self.scheduler, self.stats)  # KV slots: carry-over, named sessions
        self.scheduler.hooks.append(self.sessions)
        self.scheduler.on_acquire.append(self.sessions.on_acquire)
        self.learning = Learning(self)  # benchmark suite, maintenance window, request optimizer
        self.rpc = RpcServer(config.socket_path, self._on_close)
        config_methods.register(self.rpc, self)
        model_methods.register(self.rpc, self)
        key_methods.register(self.rpc, self)
        catalog_methods.register(self.rpc, self)
        for group in (bench_methods, maintenance_methods, optimizer_methods, metrics_methods):
            group.register(self.rpc, self)
        session_methods.register(self.rpc, self)
        self.status_rpc: RpcServer | None = None
        if config.settings.supervisor.status_group:  # read-only guardianctl status for that group
            self.status_rpc = RpcServer(
                config.status_socket_path,
                self._on_close,
                read_only=READ_ONLY_METHODS,
                group=config.settings.supervisor.status_group,
            )
            self.status_rpc.handlers = self.rpc.handlers

    def set_pinned(self, name: str, pinned: bool) -> dict[str, Any]:
        """Pin or unpin a model at run time; kept across config reloads (see with_pins)."""
        self.pins[name] = pinned
        self.config = with_pins(self.config, self.pins)
        self.scheduler.config = self.config
        rt = self.scheduler.runtimes[name]
        rt.config = self.config.models[name]
        if pinned:
            rt.cancel_idle_timer()
        else:
            self.scheduler.lifecycle.arm_idle_timer(rt)
        log.info("model_pinned" if pinned else "model_unpinned", model=name)
        return rt.status()

    def _observe_state(self, rt: ModelRuntime, old: State, new: State, reason: str, wall: float) -> None:
        if self.scheduler.runtimes.get(rt.name) is rt:  # ours, not another supervisor's in this process
            self.stats.on_state(rt, old, new, reason, wall)

    def _on_close(self, conn: Connection) -> None:
        self.scheduler.release_connection(conn.id)

    async def extra_status(self, models: list[dict[str, Any]]) -> dict[str, Any]:
        return {"vram": await self.planner.describe(models)}

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_dirs)
        STATE_OBSERVERS.append(self._observe_state)
        await self.rpc.start()
        if self.status_rpc is not None:
            await self.status_rpc.start()
        await self.learning.start()
        log.info(
            "supervisor_ready",
            socket=str(self.config.socket_path),
            models=list(self.config.models),
            pid=self.pid,
        )
        sd_notify("READY=1\nSTATUS=listening on " + str(self.config.socket_path))

    def _prepare_dirs(self) -> None:
        data = self.config.data_dir
        for sub in ("logs", "slots"):
            (data / sub).mkdir(parents=True, exist_ok=True)

    async def reload(self) -> list[str]:
        try:
            config = await asyncio.to_thread(load_config, self.config.config_dir)
        except ConfigError as e:
            log.warning("reload_rejected", error=str(e))
            raise GuardianError(
                Code.CONFIG_INVALID,
                f"{e}; the running configuration was kept",
                {"file": e.file, "line": e.line, "key": e.key},
            ) from e
        config = with_pins(config, self.pins)  # a run-time pin is no config change
        if config.settings.gpus != self.config.settings.gpus:
            self.planner.source = await asyncio.to_thread(gpu_source, config)
        self.config = config
        changed = self.scheduler.apply_config(config)
        log.info("config_reloaded", changed=changed)
        return changed

    async def stop(self) -> None:
        sd_notify("STOPPING=1")
        await self.rpc.close()
        if self.status_rpc is not None:
            await self.status_rpc.close()
        await self.learning.stop()
        await self.scheduler.close()
        await self.sessions.close()
        if self._observe_state in STATE_OBSERVERS:
            STATE_OBSERVERS.remove(self._observe_state)
        log.info("supervisor_stopped")

    def kill_now(self) -> None:
        self.scheduler.kill_all_now()


def with_pins(config: Config, pins: dict[str, bool]) -> Config:
    """The config with run-time pins applied over models.yaml's `pinned`."""
    models = {
        n: dataclasses.replace(m, pinned=pins[n]) if n in pins and m.pinned != pins[n] else m
        for n, m in config.models.items()
    }
    return dataclasses.replace(config, models=models)


def make_supervisor(config: Config) -> Supervisor:
    try:
        source = gpu_source(config)
    except GuardianError as e:
        raise click.ClickException(f"GPU inventory: {e.message}") from e
    return Supervisor(config, source)


@click.command()
@config_dir_option
@log_level_option
def main(config_dir: str | None, log_level: str | None) -> None:
    """Run the Guardian supervisor in the foreground."""
    run_foreground(config_dir, log_level, make_supervisor)
