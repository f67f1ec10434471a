"""guardian-supervisor: owns configuration, llama-server children and the admin RPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import structlog

from guardian_supervisor.gpus import GpuSource, make_source
from guardian_supervisor.learning import Learning
from guardian_supervisor.methods import bench as bench_methods
from guardian_supervisor.methods import catalog as catalog_methods
from guardian_supervisor.methods import config as config_methods
from guardian_supervisor.methods import keys as key_methods
from guardian_supervisor.methods import maintenance as maintenance_methods
from guardian_supervisor.methods import models as model_methods
from guardian_supervisor.methods import optimizer as optimizer_methods
from guardian_supervisor.methods import sessions as session_methods
from guardian_supervisor.rpc_server import Connection, RpcServer
from guardian_supervisor.scheduler import Scheduler
from guardian_supervisor.sessions import SessionManager
from guardian_supervisor.vram import VramPlanner, own_pids_of
from shared import eventloop
from shared.config import Config, default_config_dir, load_config
from shared.errors import Code, GuardianError
from shared.logs import setup_logging
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
        self.sessions = SessionManager(self.scheduler)  # KV slots: carry-over across swaps, named sessions
        self.scheduler.hooks.append(self.sessions)
        self.scheduler.on_acquire.append(self.sessions.on_acquire)
        self.learning = Learning(self)  # benchmark suite, maintenance window, request optimizer
        self.rpc = RpcServer(config.socket_path, self._on_close)
        config_methods.register(self.rpc, self)
        model_methods.register(self.rpc, self)
        key_methods.register(self.rpc, self)
        catalog_methods.register(self.rpc, self)
        for group in (bench_methods, maintenance_methods, optimizer_methods):
            group.register(self.rpc, self)
        session_methods.register(self.rpc, self)

    def _on_close(self, conn: Connection) -> None:
        self.scheduler.release_connection(conn.id)

    async def extra_status(self, models: list[dict[str, Any]]) -> dict[str, Any]:
        return {"vram": await self.planner.describe(models)}

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_dirs)
        await self.rpc.start()
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
        if config.settings.gpus != self.config.settings.gpus:
            self.planner.source = await asyncio.to_thread(gpu_source, config)
        self.config = config
        changed = self.scheduler.apply_config(config)
        log.info("config_reloaded", changed=changed)
        return changed

    async def stop(self) -> None:
        sd_notify("STOPPING=1")
        await self.rpc.close()
        await self.learning.stop()
        await self.scheduler.close()
        await self.sessions.close()
        log.info("supervisor_stopped")


async def serve_until_signalled(*runners: Any) -> None:
    """Start each runner (start/stop pair), wait for SIGINT/SIGTERM, stop them in reverse."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = []
    try:
        for r in runners:
            await r.start()
            started.append(r)
        await stop.wait()
        log.info("shutting_down")
    finally:
        for r in reversed(started):
            await r.stop()


def source_or_exit(config: Config) -> GpuSource:
    try:
        return gpu_source(config)
    except GuardianError as e:
        raise click.ClickException(f"GPU inventory: {e.message}") from e


def load_or_exit(config_dir: str | None) -> Config:
    path = default_config_dir() if config_dir is None else os.path.abspath(config_dir)
    try:
        return load_config(Path(path))
    except ConfigError as e:
        raise click.ClickException(f"configuration error: {e}") from e


def run_foreground(config_dir: str | None, log_level: str | None, *others: Callable[[Config], Any]) -> None:
    """Run the supervisor, plus a runner made by each of `others` from the configuration,
    until SIGINT/SIGTERM; however it ends, no llama-server outlives it."""
    config = load_or_exit(config_dir)
    setup_logging(log_level or config.settings.logging.level, config.settings.logging.format)
    sup = Supervisor(config, source_or_exit(config))
    try:
        eventloop.run(serve_until_signalled(sup, *(make(config) for make in others)))
    except GuardianError as e:
        raise click.ClickException(e.message) from e
    finally:
        sup.scheduler.kill_all_now()


config_dir_option = click.option(
    "--config-dir",
    envvar="GUARDIAN_CONFIG_DIR",
    default=None,
    help="Directory with settings.yaml and models.yaml (default: ./etc).",
)
log_level_option = click.option(
    "--log-level", default=None, help="debug, info, warning or error (default: settings.yaml logging.level)."
)


@click.command()
@config_dir_option
@log_level_option
def main(config_dir: str | None, log_level: str | None) -> None:
    """Run the Guardian supervisor in the foreground."""
    run_foreground(config_dir, log_level)
