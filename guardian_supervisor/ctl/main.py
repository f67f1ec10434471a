"""guardianctl: a CLI over the supervisor's admin RPC. Every command has --json.

Each command group lives in its own module of this package and adds itself with
`register(main)`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from guardian_supervisor.ctl import bench, keys, models, sessions
from guardian_supervisor.ctl.base import Ctl
from shared.config import default_config_dir


@click.group()
@click.option(
    "--config-dir",
    envvar="GUARDIAN_CONFIG_DIR",
    default=None,
    help="Directory with settings.yaml (default: ./etc).",
)
@click.option(
    "--socket",
    envvar="GUARDIAN_SOCKET",
    default=None,
    help="Supervisor socket (default: from settings.yaml).",
)
@click.pass_context
def main(ctx: click.Context, config_dir: str | None, socket: str | None) -> None:
    """Control a running guardian-supervisor."""
    ctx.obj = Ctl(Path(config_dir).resolve() if config_dir else default_config_dir(), socket)


for _group in (models, keys, sessions, bench):
    _group.register(main)


if __name__ == "__main__":
    main(prog_name=os.path.basename(sys.argv[0]))
