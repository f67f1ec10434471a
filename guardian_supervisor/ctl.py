"""guardianctl: a CLI over the supervisor's admin RPC. Every command has --json."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import click

from guardian_supervisor import ctl_bench, ctl_sessions
from shared.config import default_config_dir, load_settings
from shared.errors import GuardianError
from shared.rpc import call_sync
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
            return call_sync(self.socket, method, given, timeout)
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


def _print_status(st: dict[str, Any]) -> None:
    click.echo(f"{'MODEL':<24} {'STATE':<9} {'PORT':>5} {'PID':>7} {'INFLIGHT':>8} {'CTX':>7}  REASON")
    for m in st["models"]:
        click.echo(
            f"{m['name']:<24} {m['state']:<9} {m['port'] or '-':>5} {m['pid'] or '-':>7} {m['inflight']:>8} {m['ctx'] or '-':>7}  {m['reason']}"
        )
        if m["pid"]:
            click.echo(f"    argv: {' '.join(m['argv'])}")
        if m["last_error"]:
            click.echo(f"    error: {m['last_error']}")
    click.echo(f"leases: {st['leases']}  queued: {st['queued']}  supervisor pid: {st['pid']}")
    vram = st.get("vram")
    if vram:
        for g in vram["gpus"]:
            held = ", ".join(f"{n} {mb} MiB" for n, mb in g["models"].items()) or "no models"
            click.echo(
                f"GPU {g['index']} {g['name']}: {g['free_mib']}/{g['total_mib']} MiB free, others {g['other_mib']} MiB; {held}"
            )
        if not vram["gpus"]:
            click.echo(
                f"{vram['mode']} mode: {vram['cpu']['available_mib']}/{vram['cpu']['total_mib']} MiB RAM available"
            )


@main.command()
@ctl_command
def status(ctl: Ctl, as_json: bool) -> None:
    """Every model's state, port, pid and exact argv."""
    emit(as_json, ctl.call("models.status"), _print_status)


@main.command()
@ctl_command
def models(ctl: Ctl, as_json: bool) -> None:
    """The configured models."""

    def human(ms: list[dict[str, Any]]) -> None:
        click.echo(f"{'MODEL':<24} {'STATE':<9} {'CONTEXT':>8} {'BACKEND':<10} PATH")
        for m in ms:
            click.echo(f"{m['name']:<24} {m['state']:<9} {m['context']:>8} {m['backend']:<10} {m['path']}")

    emit(as_json, ctl.call("models.list"), human)


@main.command()
@click.argument("model")
@ctl_command
def load(ctl: Ctl, model: str, as_json: bool) -> None:
    """Load MODEL now (waits until it is ready)."""
    st = ctl.call("models.load", {"model": model})
    emit(as_json, st, f"{st['name']} is {st['state']} on port {st['port']} (pid {st['pid']})")


@main.command()
@click.argument("model", required=False)
@click.option("--all", "all_", is_flag=True, help="Unload every model.")
@ctl_command
def unload(ctl: Ctl, model: str | None, all_: bool, as_json: bool) -> None:
    """Unload MODEL (or --all) once its in-flight requests finish."""
    if bool(model) == all_:
        raise click.UsageError("name one MODEL or pass --all")
    stopped = ctl.call("models.unload", {"all": True} if all_ else {"model": model})
    emit(as_json, stopped, "unloaded: " + (", ".join(stopped) if stopped else "nothing was loaded"))


@main.command()
@ctl_command
def reload(ctl: Ctl, as_json: bool) -> None:
    """Re-read settings.yaml and models.yaml; a bad file keeps the running configuration."""
    r = ctl.call("config.reload")
    emit(as_json, r, f"configuration reloaded; changed: {', '.join(r['changed']) or 'nothing'}")


@main.command()
@click.argument("model")
@click.option("-n", "--lines", default=50, show_default=True)
@ctl_command
def logs(ctl: Ctl, model: str, lines: int, as_json: bool) -> None:
    """The last lines llama-server printed for MODEL."""
    emit(
        as_json,
        ctl.call("models.logs", {"model": model, "lines": lines}),
        lambda ls: click.echo("\n".join(ls)),
    )


@main.command()
@click.argument("model")
@click.option(
    "--ctx", type=int, default=None, help="Context per conversation (default: the model's context)."
)
@ctl_command
def estimate(ctl: Ctl, model: str, ctx: int | None, as_json: bool) -> None:
    """Memory MODEL needs at a context, from its GGUF file; measured figures beside it."""
    r = ctl.call("models.estimate", {"model": model, "ctx": ctx or None})

    def human(r: dict[str, Any]) -> None:
        e, m = r["estimate"], r["measured"] or {}
        click.echo(f"{r['model']}: context {r['ctx']} x {r['parallel']} slot(s), KV cache {r['kv_type']}")
        click.echo(f"{'':<10} {'estimate MiB':>13} {'measured MiB':>13}")
        rows = [
            ("weights", "weights_mib", "model_bytes"),
            ("KV cache", "kv_mib", "kv_bytes"),
            ("compute", "compute_mib", "compute_bytes"),
            ("output", "output_mib", "output_bytes"),
            ("overhead", "overhead_mib", None),
            ("total", "total_mib", "total_bytes"),
        ]
        for label, key, mkey in rows:
            meas = m.get(mkey) if mkey else None
            click.echo(f"{label:<10} {e[key]:>13.2f} {meas if meas is not None else '-':>13}")
        layers = e["layer_weight_mib"]
        if layers:
            click.echo(
                f"per layer: {len(layers)} layers, {layers[0]:.2f} MiB weights + {e['kv_per_layer_mib'][0]:.2f} MiB KV each"
            )
        if r["planned_total_mib"] != e["total_mib"]:
            click.echo(f"placement uses the measured figures: {r['planned_total_mib']:.2f} MiB")

    emit(as_json, r, human)


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


# Command groups that live in their own modules register here (each has register(main)).
_PLUGINS: tuple[Any, ...] = (ctl_sessions, ctl_bench)
for _module in _PLUGINS:
    _module.register(main)


if __name__ == "__main__":
    main(prog_name=os.path.basename(sys.argv[0]))
