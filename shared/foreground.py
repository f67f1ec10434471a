"""Running a daemon in the foreground: configuration, logging, signals, orderly shutdown.

Both daemons (and `guardian`, which runs them together) start the same way, so the runner
lives here and neither daemon imports the other.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import click
import structlog

from shared import eventloop
from shared.config import Config, default_config_dir, load_config
from shared.errors import GuardianError
from shared.logs import setup_logging
from shared.yamlschema import ConfigError

log = structlog.get_logger("foreground")


class Runner(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def kill_now(self) -> None:
        """Last resort when the loop ends abnormally: leave no child process behind."""


async def serve_until_signalled(*runners: Runner) -> None:
    """Start each runner, wait for SIGINT/SIGTERM, stop them in reverse."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[Runner] = []
    try:
        for r in runners:
            await r.start()
            started.append(r)
        await stop.wait()
        log.info("shutting_down")
    finally:
        for r in reversed(started):
            await r.stop()


def load_or_exit(config_dir: str | None) -> Config:
    path = default_config_dir() if config_dir is None else os.path.abspath(config_dir)
    try:
        return load_config(Path(path))
    except ConfigError as e:
        raise click.ClickException(f"configuration error: {e}") from e


def run_foreground(
    config_dir: str | None, log_level: str | None, *factories: Callable[[Config], Runner]
) -> None:
    """Run a runner made by each factory from the configuration until SIGINT/SIGTERM;
    however it ends, each gets `kill_now` so no llama-server outlives it."""
    config = load_or_exit(config_dir)
    setup_logging(log_level or config.settings.logging.level, config.settings.logging.format)
    runners = [make(config) for make in factories]
    try:
        eventloop.run(serve_until_signalled(*runners))
    except GuardianError as e:
        raise click.ClickException(e.message) from e
    finally:
        for r in runners:
            r.kill_now()


config_dir_option = click.option(
    "--config-dir",
    envvar="GUARDIAN_CONFIG_DIR",
    default=None,
    help="Directory with settings.yaml and models.yaml (default: ./etc).",
)
log_level_option = click.option(
    "--log-level", default=None, help="debug, info, warning or error (default: settings.yaml logging.level)."
)
