"""guardian: the supervisor and the proxy in one foreground process (the brief's app/main.py).

They still talk over the Unix socket, so this runs exactly the code paths of the two daemons.
This is the one composition root that knows both daemons: each is imported only here, by
name, so neither package imports the other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

import click

from shared.config import Config
from shared.foreground import Runner, config_dir_option, log_level_option, run_foreground

# Started in this order, stopped in reverse: the proxy needs the supervisor's socket.
RUNNER_FACTORIES = ("guardian_supervisor.daemon:make_supervisor", "guardian_proxy.app:ProxyServer")


def factory(spec: str) -> Callable[[Config], Runner]:
    module, name = spec.split(":")
    return cast(Callable[[Config], Runner], getattr(importlib.import_module(module), name))


@click.command()
@config_dir_option
@log_level_option
def main(config_dir: str | None, log_level: str | None) -> None:
    """Run the supervisor and the proxy together in the foreground; Ctrl-C stops everything."""
    run_foreground(config_dir, log_level, *(factory(spec) for spec in RUNNER_FACTORIES))
