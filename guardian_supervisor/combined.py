"""guardian: the supervisor and the proxy in one foreground process (the brief's app/main.py).

They still talk over the Unix socket, so this runs exactly the code paths of the two daemons.
"""

from __future__ import annotations

import click

from guardian_proxy.app import ProxyServer
from guardian_supervisor.daemon import Supervisor, load_or_exit, serve_until_signalled, source_or_exit
from shared import eventloop
from shared.errors import GuardianError
from shared.logs import setup_logging


@click.command()
@click.option(
    "--config-dir",
    envvar="GUARDIAN_CONFIG_DIR",
    default=None,
    help="Directory with settings.yaml and models.yaml (default: ./etc).",
)
@click.option("--log-level", default=None, help="debug, info, warning or error.")
def main(config_dir: str | None, log_level: str | None) -> None:
    """Run the supervisor and the proxy together in the foreground; Ctrl-C stops everything."""
    config = load_or_exit(config_dir)
    setup_logging(log_level or config.settings.logging.level, config.settings.logging.format)
    sup = Supervisor(config, source_or_exit(config))
    try:
        eventloop.run(serve_until_signalled(sup, ProxyServer(config)))
    except GuardianError as e:
        raise click.ClickException(e.message) from e
    finally:
        sup.scheduler.kill_all_now()
