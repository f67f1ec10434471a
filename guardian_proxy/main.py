"""guardian-proxy: the Ollama/OpenAI API in front of the supervisor's llama-servers."""

from __future__ import annotations

import click

from guardian_proxy.app import ProxyServer
from guardian_supervisor.daemon import load_or_exit, serve_until_signalled
from shared import eventloop
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
    """Run the Guardian proxy in the foreground (the supervisor must be running)."""
    config = load_or_exit(config_dir)
    setup_logging(log_level or config.settings.logging.level, config.settings.logging.format)
    eventloop.run(serve_until_signalled(ProxyServer(config)))
