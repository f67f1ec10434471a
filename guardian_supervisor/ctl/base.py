"""What every guardianctl command shares: the RPC caller, --json and output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click

from shared.config import load_settings, status_socket_path
from shared.errors import GuardianError
from shared.rpc import READ_ONLY_METHODS, call_sync
from shared.yamlschema import ConfigError


class Ctl:
    def __init__(self, config_dir: Path, socket: str | None) -> None:
        self.config_dir = config_dir
        self._socket = socket

    @property
    def socket(self) -> Path:
        if self._socket:
            return Path(self._socket)
        try:
            return load_settings(self.config_dir).supervisor.socket
        except ConfigError as e:
            raise click.ClickException(f"cannot find the supervisor socket: {e}") from e

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Call `method`; parameters set to None are left out (the supervisor's defaults apply)."""
        given = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            try:
                return call_sync(self.socket, method, given, timeout)
            except GuardianError:
                # Not in the admin socket's group: read-only calls may use the status socket.
                ro = status_socket_path(self.socket)
                if method not in READ_ONLY_METHODS or os.access(self.socket, os.W_OK) or not ro.exists():
                    raise
                return call_sync(ro, method, given, timeout)
        except GuardianError as e:
            click.echo(f"error: {e.message}", err=True)
            for line in e.data.get("log_tail", []) or []:
                click.echo(f"  | {line}", err=True)
            sys.exit(e.code.exit_code)


def emit(as_json: bool, data: Any, human: Any = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif callable(human):
        human(data)
    else:
        click.echo(human if human is not None else data)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def ctl_command(fn: Callable[..., None]) -> Callable[..., None]:
    """What every command takes: the Ctl object first, and --json (as `as_json`)."""
    return cast(Callable[..., None], json_option(click.pass_obj(fn)))
