"""models.* — leases for the proxy, load/unload/status for guardianctl."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from guardian_supervisor.rpc.server import Connection, RpcServer, params_int, params_str
from shared.config import canonical_name, timeouts_for
from shared.errors import Code, GuardianError

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor


def register(server: RpcServer, sup: Supervisor) -> None:
    sched = sup.scheduler

    async def acquire(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Wait until MODEL is ready and lease it: {model, ctx?, keep_alive?, profile?, user?} → {lease, url, ...}.

        profile: launch overrides ({batch_size, ubatch_size}) the server must run with;
        user: false for Guardian's own work (benchmarks), which must yield to users.

        The lease belongs to this connection; release it with models.release.
        """
        name = params_str(params, "model")
        ctx = params_int(params, "ctx")
        t0 = time.monotonic()
        try:
            lease, rt = await sched.acquire(
                name,
                conn.id,
                ctx=ctx or None,
                keep_alive=params.get("keep_alive"),
                profile=params.get("profile"),
                user=params.get("user", True) is not False,
            )
        except ValueError as e:
            raise GuardianError(Code.INVALID_PARAMS, str(e)) from e
        return {
            "lease": lease.id,
            "model": rt.name,
            "url": f"http://127.0.0.1:{rt.port}",
            "api_key": rt.child.api_key if rt.child else None,  # the caller's relay sends it
            "ctx": rt.ctx,
            "timeout_s": rt.request_timeout_s,
            "waited_s": round(time.monotonic() - t0, 6),  # queue + load time: Ollama's load_duration
        }

    async def release(params: dict[str, Any], conn: Connection) -> bool:
        """Release a lease: {lease}. Idempotent."""
        lease = params_str(params, "lease")
        return sched.release(lease)

    async def list_models(params: dict[str, Any], conn: Connection) -> list[dict[str, Any]]:
        """Every configured model with its state and what clients need to list it."""
        out = []
        for rt in sched.runtimes.values():
            cfg = rt.config
            timeout_s, load_timeout_s = await asyncio.to_thread(timeouts_for, sched.config, cfg)
            out.append(
                {
                    "name": cfg.name,
                    "canonical": canonical_name(cfg.name),
                    "aliases": list(cfg.aliases),
                    "path": str(cfg.path),
                    "context": cfg.context,
                    "embeddings": cfg.embeddings,
                    "mmproj": str(cfg.mmproj) if cfg.mmproj else None,
                    "backend": sched.config.backend_name(cfg),
                    "state": str(rt.state),
                    "ctx": rt.ctx,
                    "expires_at": rt.idle_deadline_wall,
                    "timeout_s": timeout_s,
                    "load_timeout_s": load_timeout_s,
                    "pinned": cfg.pinned,
                }
            )
        return out

    async def status(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Full status: each model's state, port, pid and exact argv; queue and lease counts."""
        models = sched.status()
        return {
            "models": models,
            "leases": len(sched.leases),
            "queued": len(sched.queue),
            "config_dir": str(sched.config.config_dir),
            "pid": sup.pid,
            **(await sup.extra_status(models)),
        }

    async def estimate(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Memory breakdown for {model, ctx?}: the GGUF estimate, llama.cpp's projection
        (llama-fit-params, upstream flavor) and measured figures where they exist, and which
        of them placement uses (`source`: measured, fit-params or estimator)."""
        name = params_str(params, "model")
        cfg = sched.resolve(name)
        ctx = params_int(params, "ctx") or cfg.context
        try:
            src = await sup.planner.sources(cfg, ctx, for_planning=False)
        except (OSError, ValueError) as e:
            raise GuardianError(Code.INVALID_PARAMS, f"cannot estimate '{cfg.name}': {e}") from e
        return {
            "model": cfg.name,
            "ctx": ctx,
            "kv_type": cfg.kv_type,
            "parallel": cfg.parallel,
            "swa_full": {"on": src.swa.on, "reason": src.swa.reason},
            "estimate": src.estimate.to_dict(),
            "planned_total_mib": src.used.to_dict()["total_mib"],
            "source": src.source,
            "fit_params": None if src.projection is None else _mib_dict(src.projection.record()),
            "fit_params_error": src.fit_error,
            "measured": None if src.measured is None else _mib_dict(src.measured),
        }

    async def load(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Load MODEL now (as a request would) and return its status."""
        name = params_str(params, "model")
        lease, rt = await sched.acquire(name, conn.id)
        sched.release(lease.id)
        return rt.status()

    async def unload(params: dict[str, Any], conn: Connection) -> list[str]:
        """Unload {model} or {all: true} once in-flight requests finish; returns who was stopped."""
        if params.get("all"):
            names = [rt.name for rt in sched.runtimes.values()]
        else:
            name = params_str(params, "model")
            names = [sched.resolve(name).name]
        return [n for n in names if await sched.unload(n)]

    async def logs(params: dict[str, Any], conn: Connection) -> list[str]:
        """The last {lines} log lines of {model}'s llama-server."""
        name = params_str(params, "model")
        rt = sched.runtimes[sched.resolve(name).name]
        n = params_int(params, "lines", 50)
        return rt.child.tail(n) if rt.child else rt.last_error_tail[-n:]

    async def pin(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Pin {model} (never evicted, no idle unload) or unpin it with {pinned: false}, until
        the supervisor restarts; models.yaml's `pinned: true` makes it permanent."""
        name = sched.resolve(params_str(params, "model")).name
        return sup.set_pinned(name, params.get("pinned", True) is not False)

    for method, fn in {
        "models.pin": pin,
        "models.acquire": acquire,
        "models.release": release,
        "models.list": list_models,
        "models.status": status,
        "models.load": load,
        "models.unload": unload,
        "models.logs": logs,
        "models.estimate": estimate,
    }.items():
        server.register(method, fn)


def _mib_dict(rec: dict[str, Any]) -> dict[str, Any]:
    """*_bytes figures in MiB (two decimals); per-device rows [name, model, context, compute] too."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if k.endswith("_bytes"):
            out[k] = round(v / 2**20, 2)
        elif k == "rows":
            out[k] = [[r[0], *(round(x / 2**20, 2) for x in r[1:])] for r in v]
        else:
            out[k] = v
    return out
