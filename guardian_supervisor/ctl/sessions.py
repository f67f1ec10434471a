"""guardianctl session: save, restore, list and delete KV-cache sessions (RPC sessions.*).

`register(main)` adds the group to guardianctl.
"""

from __future__ import annotations

from typing import Any

import click

from guardian_supervisor.ctl.base import Ctl, ctl_command, emit


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _print_list(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no sessions saved")
        return
    click.echo(f"{'NAME':<24} {'MODEL':<20} {'SLOT':>4} {'TOKENS':>7} {'MiB':>8} {'CTX':>7}  USED")
    for r in rows:
        click.echo(
            f"{r['name']:<24} {r['model']:<20} {r['slot']:>4} {r['n_tokens']:>7} {_mib(r['bytes']):>8} {r['ctx']:>7}  {r['used_at']}"
        )


def register(main: click.Group) -> None:
    @main.group("session")
    def session() -> None:
        """KV-cache sessions: save a conversation by name, restore it later, list, delete."""

    @session.command("save")
    @click.argument("name")
    @click.option("--model", "-m", required=True, help="The loaded model whose conversation to save.")
    @click.option("--slot", type=int, default=None, help="Slot to save (default: the one used last).")
    @ctl_command
    def save(ctl: Ctl, name: str, model: str, slot: int | None, as_json: bool) -> None:
        """Save MODEL's conversation as session NAME (replaces an existing NAME)."""
        r = ctl.call("sessions.save", {"name": name, "model": model, "slot": slot})
        emit(
            as_json,
            r,
            f"saved session {r['name']}: {r['n_tokens']} tokens from slot {r['slot']} of {r['model']} "
            f"({_mib(r['bytes'])} MiB, {r['save_ms']} ms)",
        )

    @session.command("restore")
    @click.argument("name")
    @click.option("--model", "-m", default=None, help="Refuse unless the session belongs to this model.")
    @click.option("--slot", type=int, default=None, help="Slot to restore into (default: the saved one).")
    @ctl_command
    def restore(ctl: Ctl, name: str, model: str | None, slot: int | None, as_json: bool) -> None:
        """Restore session NAME into its model, loading the model if needed."""
        r = ctl.call("sessions.restore", {"name": name, "model": model, "slot": slot})
        loaded = " (loaded the model first)" if r.get("loaded_model") else ""
        # "unknown" is normal for a freshly started server; "mismatch" is llama-server's restore bug.
        note = (
            "; warning: the slot does not show the tokens, see the supervisor log"
            if r["check"] == "mismatch"
            else ""
        )
        emit(
            as_json,
            r,
            f"restored session {r['name']}: {r['n_restored']} tokens into slot {r['slot']} of {r['model']}"
            f" in {r['restore_ms']} ms{loaded}{note}",
        )

    @session.command("list")
    @click.option("--model", "-m", default=None, help="Only this model's sessions.")
    @click.option("--carry", is_flag=True, help="Include the carry-over files kept across swaps.")
    @ctl_command
    def list_(ctl: Ctl, model: str | None, carry: bool, as_json: bool) -> None:
        """Saved sessions, least recently used first."""
        emit(as_json, ctl.call("sessions.list", {"carry": carry, "model": model}), _print_list)

    @session.command("delete")
    @click.argument("name")
    @ctl_command
    def delete(ctl: Ctl, name: str, as_json: bool) -> None:
        """Delete session NAME."""
        r = ctl.call("sessions.delete", {"name": name})
        emit(as_json, r, f"deleted session {r['deleted']} ({r['model']})")


__all__ = ["register"]
