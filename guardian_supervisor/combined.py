"""guardian: the supervisor and the proxy in one foreground process (the brief's app/main.py).

They still talk over the Unix socket, so this runs exactly the code paths of the two daemons.
"""

from __future__ import annotations

import click

from guardian_proxy.app import ProxyServer
from guardian_supervisor.daemon import config_dir_option, log_level_option, run_foreground


@click.command()
@config_dir_option
@log_level_option
def main(config_dir: str | None, log_level: str | None) -> None:
    """Run the supervisor and the proxy together in the foreground; Ctrl-C stops everything."""
    run_foreground(config_dir, log_level, ProxyServer)
