"""guardianctl status, models, load, unload, reload, logs, estimate (RPC models.*, config.*)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from guardian_supervisor.ctl.base import Ctl, ctl_command, emit


def _print_status(st: dict[str, Any]) -> None:
    click.echo(
        f"{'MODEL':<24} {'STATE':<9} {'PORT':>5} {'PID':>7} {'INFLIGHT':>8} {'QUEUED':>6} {'WAIT':>6} {'CTX':>7}  REASON"
    )
    for m in st["models"]:
        queued = m.get("queued", 0)
        wait = f"{m.get('oldest_wait_s', 0.0):.1f}s" if queued else "-"
        click.echo(
            f"{m['name']:<24} {m['state']:<9} {m['port'] or '-':>5} {m['pid'] or '-':>7} {m['inflight']:>8} {queued:>6} {wait:>6} {m['ctx'] or '-':>7}  {m['reason']}"
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


def load_fraction(elapsed_s: float, expected_s: float) -> float:
    """How full the load bar is: time against the expected load time, never full before ready."""
    return min(0.95, elapsed_s / max(expected_s, 0.1))


def expected_load_s(model: dict[str, Any] | None) -> float:
    """The last load time if there was one, else a guess of 2 s (the bar then fills on time)."""
    if model and model.get("load_s"):
        return float(model["load_s"])
    return 2.0


def load_with_progress(ctl: Ctl, model: str, as_json: bool) -> dict[str, Any]:
    """models.load in a thread; meanwhile a bar (stderr with --json) fed by models.status."""
    done: dict[str, Any] = {}

    def work() -> None:
        try:
            done["result"] = ctl.call("models.load", {"model": model})
        except SystemExit as e:  # Ctl.call printed the error already
            done["exit"] = e.code

    t = threading.Thread(target=work, daemon=True)
    t0 = time.monotonic()
    t.start()
    with click.progressbar(
        length=100, label=f"loading {model}", file=sys.stderr if as_json else None, item_show_func=lambda x: x
    ) as bar:
        shown = 0
        expected: float | None = None
        while t.is_alive():
            t.join(0.25)
            try:
                st = ctl.call("models.status")
            except SystemExit:
                continue
            m = next((x for x in st["models"] if x["name"] == model), None)
            if expected is None:
                expected = expected_load_s(m)
            pct = int(100 * load_fraction(time.monotonic() - t0, expected))
            tail = (m or {}).get("log_tail") or []
            label = f"{(m or {}).get('state', '')} {tail[-1][:50] if tail else ''}".strip()
            bar.update(max(pct - shown, 0), label)
            shown = max(shown, pct)
        if "result" in done:
            bar.update(100 - shown, "ready")
    if "exit" in done:
        sys.exit(done["exit"])
    return dict(done["result"])


def register(main: click.Group) -> None:
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
                click.echo(
                    f"{m['name']:<24} {m['state']:<9} {m['context']:>8} {m['backend']:<10} {m['path']}"
                )

        emit(as_json, ctl.call("models.list"), human)

    @main.command()
    @click.argument("model")
    @ctl_command
    def load(ctl: Ctl, model: str, as_json: bool) -> None:
        """Load MODEL now (waits until it is ready, with a progress bar)."""
        st = load_with_progress(ctl, model, as_json)
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
            e, m, f = r["estimate"], r["measured"] or {}, r.get("fit_params") or {}
            click.echo(f"{r['model']}: context {r['ctx']} x {r['parallel']} slot(s), KV cache {r['kv_type']}")
            click.echo(f"{'':<10} {'estimate MiB':>13} {'fit-params MiB':>15} {'measured MiB':>13}")
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
                fit = f.get(mkey) if mkey else None
                click.echo(
                    f"{label:<10} {e[key]:>13.2f} {fit if fit is not None else '-':>15} "
                    f"{meas if meas is not None else '-':>13}"
                )
            if e.get("projector_mib"):  # --mmproj: in the weights and total above unless in RAM
                where = "system RAM (--no-mmproj-offload)" if e.get("projector_in_ram") else "the main GPU"
                click.echo(
                    f"projector: {e['projector_mib']:.2f} MiB weights + {e.get('projector_compute_mib', 0):.2f} MiB "
                    f"compute, on {where}"
                )
            layers = e["layer_weight_mib"]
            if layers:
                click.echo(
                    f"per layer: {len(layers)} layers, {layers[0]:.2f} MiB weights + {e['kv_per_layer_mib'][0]:.2f} MiB KV each"
                )
            names = {
                "measured": "the measured buffers of an earlier load",
                "fit-params": "llama.cpp's projection (llama-fit-params)",
                "estimator": "Guardian's GGUF estimate",
            }
            source = r.get("source", "estimator")
            click.echo(
                f"source: {source}: placement uses {names.get(source, source)}, {r['planned_total_mib']:.2f} MiB"
            )
            if r.get("fit_params_error"):
                click.echo(f"llama-fit-params: {r['fit_params_error']}")
            swa = r.get("swa_full") or {}
            if swa.get("reason") not in (None, "no sliding-window layers"):
                click.echo(
                    f"sliding-window cache: {'full (--swa-full)' if swa['on'] else 'window only'}: {swa['reason']}"
                )

        emit(as_json, r, human)
