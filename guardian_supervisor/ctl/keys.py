"""guardianctl keys: create, list, revoke API keys (RPC keys.*)."""

from __future__ import annotations

import sys
from typing import Any

import click

from guardian_supervisor.ctl.base import Ctl, ctl_command, emit


def register(main: click.Group) -> None:
    @main.group()
    def keys() -> None:
        """API keys (prefix flip_): create, list, revoke."""

    @keys.command("create")
    @click.argument("name")
    @click.option("--models", default=None, help="Comma-separated models this key may use (default: all).")
    @click.option("--expires", default=None, help="Lifetime like 30d, 12h, 90m, 2w, or an ISO date.")
    @ctl_command
    def keys_create(ctl: Ctl, name: str, models: str | None, expires: str | None, as_json: bool) -> None:
        """Create key NAME and print it once."""
        r = ctl.call(
            "keys.create", {"name": name, "models": models.split(",") if models else None, "expires": expires}
        )
        if as_json:
            emit(True, r)
            return
        click.echo(r["key"])
        click.echo(f"created key {r['name']!r}; store it now: it will not be shown again.", err=True)

    @keys.command("list")
    @ctl_command
    def keys_list(ctl: Ctl, as_json: bool) -> None:
        """Name, created, expiry, last use and scope of every key (never the secret)."""

        def human(rs: list[dict[str, Any]]) -> None:
            click.echo(f"{'NAME':<20} {'CREATED':<26} {'EXPIRES':<26} {'LAST USED':<26} MODELS")
            for r in rs:
                scope = ",".join(r["models"]) if r["models"] else "all"
                click.echo(
                    f"{r['name']:<20} {r['created_at']:<26} {r['expires_at'] or 'never':<26} {r['last_used_at'] or '-':<26} {scope}"
                )

        emit(as_json, ctl.call("keys.list"), human)

    @keys.command("revoke")
    @click.argument("name")
    @ctl_command
    def keys_revoke(ctl: Ctl, name: str, as_json: bool) -> None:
        """Revoke key NAME (takes effect within a second)."""
        ok = ctl.call("keys.revoke", {"name": name})
        if not ok:
            click.echo(f"error: no key named {name!r}", err=True)
            sys.exit(3)
        emit(as_json, {"revoked": name}, f"revoked {name}")
