"""guardianctl bench / maintenance / optimizer (RPC bench.*, maintenance.*, optimizer.*).

`register(main)` adds the groups to guardianctl.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

import click

from guardian_supervisor.ctl.base import Ctl, ctl_command, emit

RUNNING = ("running", "paused")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _fig(x: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(x) if isinstance(x, int | float) else "-"


def _print_bench_status(st: dict[str, Any]) -> None:
    if st.get("run_id") is None:
        click.echo("no benchmark run yet")
        return
    models = ", ".join(st.get("models") or []) or "all models"
    click.echo(
        f"run {st['run_id']} ({st.get('source')}, {models}): {st['status']}, {st['done']}/{st['total']} cells"
        + (f"; {st['pause_reason']}" if st.get("status") == "paused" and st.get("pause_reason") else "")
    )
    cur = st.get("current")
    if cur:
        click.echo(
            f"measuring {cur['model']} ctx {cur['ctx']} batch {cur['batch_size']} ubatch {cur['ubatch_size']}"
        )
    if st.get("error") and st.get("status") != "finished":
        click.echo(f"note: {st['error']}")
    click.echo(
        f"{'MODEL':<20} {'CTX':>7} {'BATCH':>6} {'UBATCH':>6} {'STATUS':<13} {'PROMPT t/s':>10} {'GEN t/s':>9} {'LOAD s':>7}"
    )
    for c in st.get("cells", []):
        click.echo(
            f"{c['model']:<20} {c['ctx']:>7} {c['batch_size']:>6} {c['ubatch_size']:>6} {c['status']:<13} "
            f"{_fig(c.get('prompt_tps')):>10} {_fig(c.get('gen_tps')):>9} {_fig(c.get('load_s'), '{:.2f}'):>7}"
        )


def _print_records(r: dict[str, Any]) -> None:
    if not r["best"]:
        click.echo("no records yet: run 'guardianctl bench run'")
        return
    click.echo(f"{'MODEL':<20} {'METRIC':<11} {'BEST t/s':>9}  SETTINGS                        SET")
    for model, metrics in sorted(r["best"].items()):
        for metric, rec in sorted(metrics.items()):
            s = rec["settings"]
            settings = f"ctx {s['ctx']} batch {s['batch_size']} ubatch {s['ubatch_size']}"
            click.echo(
                f"{model:<20} {metric.replace('_tps', ''):<11} {rec['value']:>9.1f}  {settings:<31} {_when(rec.get('at'))}"
            )
    if r["events"]:
        from guardian_supervisor.learning.bench_plan import record_message

        click.echo("\nrecent records:")
        for e in r["events"][-10:]:
            click.echo(f"  {_when(e.get('at'))}  {record_message(e)}")


def _print_maintenance(m: dict[str, Any]) -> None:
    sch = m["schedule"]
    state = (
        f"IN MAINTENANCE ({m['source']}, since {_when(m['since'])})" if m["active"] else "not in maintenance"
    )
    click.echo(state)
    click.echo(
        f"window: {sch['start_hour']:02d}:00-{sch['end_hour']:02d}:00 on {','.join(sch['days'])}"
        f" ({'open now' if m['in_window'] else 'closed'}; next opens {m['next_window'] or 'never'})"
        f"{'' if m['enabled'] else '; automatic runs disabled (maintenance.enabled: false)'}"
    )
    click.echo(f"services to stop: {', '.join(m['services_to_stop']) or 'none'}")
    if m["stopped"]:
        click.echo(f"stopped by Guardian: {', '.join(m['stopped'])}")
    click.echo(f"idle for {m['idle_for_s']:.0f} s (needs {m['idle_needed_s']:.0f} s)")
    click.echo(f"now: {m['decision']['action']}: {m['decision']['reason']}")
    b = m["benchmark"]
    if b.get("run_id"):
        click.echo(f"benchmark run {b['run_id']}: {b['status']} {b['done']}/{b['total']}")


def _print_optimizer(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        click.echo(
            f"{r['model']} (configured context {r['configured_context']}){'' if r['enabled'] else ' [optimizer disabled]'}"
        )
        if "ctx" not in r:
            click.echo("  nothing computed yet")
            continue
        click.echo(f"  context: {r['ctx'] if r['ctx'] is not None else 'not learned'}")
        click.echo(f"    why: {r['ctx_why']}")
        if r.get("ctx_source"):
            src = r["ctx_source"]
            click.echo(f"    from: run {src['run_id']} at {_when(src['at'])}")
        profile = ", ".join(f"{k} {v}" for k, v in r["profile"].items()) or "not learned"
        click.echo(f"  launch settings: {profile}")
        click.echo(f"    why: {r['profile_why']}")
        if r.get("profile_source"):
            src = r["profile_source"]
            click.echo(f"    from: run {src['run_id']} at {_when(src['at'])}")
        click.echo(
            f"  conversations seen: {r['samples']} (need {r['min_samples']}), longest {r['longest'] or '-'} tokens"
        )


def register(main: click.Group) -> None:
    def follow(ctl: Ctl, st: dict[str, Any], as_json: bool) -> dict[str, Any]:
        """Poll bench.status with a progress bar (on stderr with --json) until the run ends."""
        shown = st["done"]
        with click.progressbar(
            length=max(st["total"], 1),
            label="benchmark",
            file=sys.stderr if as_json else None,
            show_pos=True,
            item_show_func=lambda x: x,
        ) as bar:
            bar.update(shown)
            while st["status"] in RUNNING:
                time.sleep(0.5)
                st = ctl.call("bench.status")
                cur = st.get("current")
                label = (
                    f"{cur['model']} ctx {cur['ctx']} b {cur['batch_size']} ub {cur['ubatch_size']}"
                    if cur
                    else st["status"]
                )
                bar.update(st["done"] - shown, label)
                shown = st["done"]
        return st

    @main.group("bench")
    def bench() -> None:
        """The benchmark suite: measure every model over a grid of launch settings."""

    @bench.command("run")
    @click.argument("models", nargs=-1)
    @click.option("--new", is_flag=True, help="Start over instead of continuing an unfinished run.")
    @click.option("--wait", is_flag=True, help="Follow the run with a progress bar until it ends.")
    @ctl_command
    def bench_run(ctl: Ctl, models: tuple[str, ...], new: bool, wait: bool, as_json: bool) -> None:
        """Start a run over MODELS (default: all in models.yaml) and return; --wait to follow it."""
        st = ctl.call("bench.run", {"models": list(models) or None, "new": new})
        if wait:
            st = follow(ctl, st, as_json)
            emit(as_json, st, _print_bench_status)
            sys.exit(0 if st["status"] == "finished" else 1)
        emit(
            as_json, st, f"benchmark run {st['run_id']} {st['status']}: {st['done']}/{st['total']} cells done"
        )

    @bench.command("status")
    @ctl_command
    def bench_status(ctl: Ctl, as_json: bool) -> None:
        """The current or last run and every cell's figures."""
        emit(as_json, ctl.call("bench.status"), _print_bench_status)

    @bench.command("stop")
    @ctl_command
    def bench_stop(ctl: Ctl, as_json: bool) -> None:
        """Stop the run now; finished cells are kept and 'bench run' continues it."""
        st = ctl.call("bench.stop")
        emit(as_json, st, f"benchmark {st['status']}: {st['done']}/{st['total']} cells done")

    @bench.command("records")
    @click.argument("model", required=False)
    @ctl_command
    def bench_records(ctl: Ctl, model: str | None, as_json: bool) -> None:
        """Best prompt and generation speeds per model, with the settings that won."""
        emit(as_json, ctl.call("bench.records", {"model": model or None}), _print_records)

    @main.group("maintenance")
    def maintenance() -> None:
        """The maintenance window: services stopped while the benchmark runs."""

    @maintenance.command("status")
    @ctl_command
    def maintenance_status(ctl: Ctl, as_json: bool) -> None:
        """Whether Guardian is in maintenance, the window, and what it would do now."""
        emit(as_json, ctl.call("maintenance.status"), _print_maintenance)

    @maintenance.command("start")
    @ctl_command
    def maintenance_start(ctl: Ctl, as_json: bool) -> None:
        """Enter maintenance now: stop the services and start the benchmark suite."""
        st = ctl.call("maintenance.start", timeout=600)
        emit(as_json, st, _print_maintenance)

    @maintenance.command("stop")
    @ctl_command
    def maintenance_stop(ctl: Ctl, as_json: bool) -> None:
        """Leave maintenance now: stop the run and start the services again."""
        st = ctl.call("maintenance.stop", timeout=600)
        emit(as_json, st, _print_maintenance)

    @main.group("optimizer")
    def optimizer() -> None:
        """The request optimizer: launch settings learned from benchmarks and traffic."""

    @optimizer.command("show")
    @click.argument("model", required=False)
    @ctl_command
    def optimizer_show(ctl: Ctl, model: str | None, as_json: bool) -> None:
        """Each learned value, why, and the benchmark result it came from."""
        emit(as_json, ctl.call("optimizer.show", {"model": model or None}), _print_optimizer)

    @optimizer.command("reset")
    @click.argument("model", required=False)
    @ctl_command
    def optimizer_reset(ctl: Ctl, model: str | None, as_json: bool) -> None:
        """Forget what was learned for MODEL (default: every model)."""
        r = ctl.call("optimizer.reset", {"model": model or None})
        emit(as_json, r, "reset: " + ", ".join(r["reset"]))
