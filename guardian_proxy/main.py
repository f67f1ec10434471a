"""guardian-proxy: the Ollama/OpenAI API in front of the supervisor's llama-servers."""

from __future__ import annotations

import click

from guardian_proxy.app import ProxyServer
from shared.foreground import config_dir_option, log_level_option, run_foreground


@click.command()
@config_dir_option
@log_level_option
def main(config_dir: str | None, log_level: str | None) -> None:
    """Run the Guardian proxy in the foreground (the supervisor must be running)."""
    run_foreground(config_dir, log_level, ProxyServer)
