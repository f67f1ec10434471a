"""The request optimizer: launch settings learned from benchmark results and real traffic.

Per model it learns
- a context size: the longest conversation users actually had (sampled from llama-server's
  GET /slots after their requests, never on the proxy's path) times HEADROOM gives the need;
  of the benchmarked contexts that hold it, the fastest at generation (the smallest of those
  within NEAR of the fastest: same speed, less memory);
- batch settings: at that context, the batch/ubatch that processed prompts fastest (batch
  sizes mostly change prompt processing). Keys models.yaml sets itself are left alone.

The scheduler calls `launch_defaults` only when a request names no context and no launch
settings, so a client's explicit num_ctx always wins. `learn` is pure; the `Optimizer`
samples, stores (data/optimizer_state.json) and recomputes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from guardian_supervisor.models.launcher import llama_session
from guardian_supervisor.models.runtime import Profile
from shared.atomic import read_json, write_json_atomic
from shared.config import ModelConfig, OptimizerSettings

log = structlog.get_logger("optimizer")

HEADROOM = 1.25  # room for a conversation to grow past the longest seen
NEAR = 0.03  # speeds this close count as equal (measurement noise)
SAMPLE_WINDOW = 200  # the most recent conversation lengths that count
SEEN_KEEP = 64
POLL_S = 1.0


@dataclass(frozen=True)
class Learned:
    model: str
    ctx: int | None
    profile: Profile
    ctx_why: str
    profile_why: str
    ctx_source: dict[str, Any] | None
    profile_source: dict[str, Any] | None
    samples: int
    longest: int | None
    need: int | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = dict(self.profile)
        return d


def source_of(line: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "at", "ctx", "batch_size", "ubatch_size", "gen_tps", "prompt_tps", "load_s")
    return {k: line.get(k) for k in keys}


def usable_results(
    lines: Iterable[Mapping[str, Any]], model: str, path: str, size: int, since: float
) -> list[Mapping[str, Any]]:
    """The newest successful result per cell, for this model file, not older than a reset."""
    latest: dict[tuple[int, int, int], Mapping[str, Any]] = {}
    for line in lines:
        if (
            line.get("model") != model
            or line.get("status") != "ok"
            or line.get("path") != path
            or line.get("size") != size
            or float(line.get("at") or 0) < since
            or line.get("gen_tps") is None
        ):
            continue
        key = (int(line["ctx"]), int(line["batch_size"]), int(line["ubatch_size"]))
        if key not in latest or float(line.get("at") or 0) >= float(latest[key].get("at") or 0):
            latest[key] = line
    return list(latest.values())


def learn(
    model: ModelConfig,
    results: list[Mapping[str, Any]],
    samples: list[int],
    min_samples: int,
) -> Learned:
    """Pure: the launch settings to use for `model` when a request names none."""
    recent = samples[-SAMPLE_WINDOW:]
    longest = max(recent) if recent else None
    need = math.ceil(longest * HEADROOM) if longest is not None and len(recent) >= min_samples else None
    rows = [
        r
        for r in results
        if int(r["ctx"]) <= model.context
        and (model.batch_size is None or int(r["batch_size"]) == model.batch_size)
        and (model.ubatch_size is None or int(r["ubatch_size"]) == model.ubatch_size)
    ]
    by_ctx: dict[int, Mapping[str, Any]] = {}
    for r in rows:  # each context's fastest generation over its batch settings
        c = int(r["ctx"])
        if c not in by_ctx or float(r["gen_tps"]) > float(by_ctx[c]["gen_tps"]):
            by_ctx[c] = r

    ctx: int | None = None
    ctx_source: dict[str, Any] | None = None
    if need is None:
        ctx_why = (
            f"{len(recent)} of the {min_samples} conversation lengths needed have been seen; "
            f"using the configured context {model.context}"
        )
    elif not by_ctx:
        ctx_why = f"no benchmark results for this model yet; using the configured context {model.context}"
    else:
        fits = sorted(c for c in by_ctx if c >= need)
        if not fits:
            ctx_why = (
                f"the longest conversation seen is {longest} tokens (x{HEADROOM} = {need}), more than any "
                f"benchmarked context ({', '.join(map(str, sorted(by_ctx)))}); using the configured context {model.context}"
            )
        else:
            fastest = max(float(by_ctx[c]["gen_tps"]) for c in fits)
            ctx = min(c for c in fits if float(by_ctx[c]["gen_tps"]) >= fastest * (1 - NEAR))
            ctx_source = source_of(by_ctx[ctx])
            gen = float(by_ctx[ctx]["gen_tps"])
            tie = f" (within {NEAR:.0%} of the fastest, {fastest:.1f}, and smaller)" if gen < fastest else ""
            ctx_why = (
                f"the longest conversation seen is {longest} tokens (x{HEADROOM} headroom = {need}); of the "
                f"benchmarked contexts that hold it ({', '.join(map(str, fits))}), {ctx} generates at "
                f"{gen:.1f} tok/s{tie}"
            )

    profile: Profile = ()
    profile_source: dict[str, Any] | None = None
    free_keys = [k for k in ("batch_size", "ubatch_size") if getattr(model, k) is None]
    if not free_keys:
        profile_why = "models.yaml sets batch_size and ubatch_size for this model"
    elif not by_ctx:
        profile_why = "no benchmark results for this model yet; llama-server's defaults apply"
    else:
        # At the learned context, or the benchmarked one nearest the configured context.
        target = ctx if ctx is not None else min(by_ctx, key=lambda c: (abs(c - model.context), -c))
        at = [r for r in rows if int(r["ctx"]) == target and r.get("prompt_tps") is not None]
        if not at:
            profile_why = f"no prompt-speed figures at context {target}"
        else:
            best = max(at, key=lambda r: float(r["prompt_tps"]))
            profile = tuple(sorted((k, int(best[k])) for k in free_keys))
            profile_source = source_of(best)
            settings = ", ".join(f"{k} {v}" for k, v in profile)
            profile_why = (
                f"at context {target}, {settings} processes prompts fastest ({float(best['prompt_tps']):.1f} tok/s, "
                f"generation {float(best['gen_tps']):.1f} tok/s) of {len(at)} benchmarked setting(s)"
            )
    return Learned(
        model.name, ctx, profile, ctx_why, profile_why, ctx_source, profile_source, len(recent), longest, need
    )


def slot_lengths(slots: Any) -> list[tuple[str, int]]:
    """(dedupe key, tokens in the conversation) for each idle slot of a GET /slots answer.

    Forks differ: older servers and ik report n_past; newer upstream reports n_prompt_tokens
    (on an idle slot: everything in its cache) and n_decoded under next_token.
    """
    out: list[tuple[str, int]] = []
    if not isinstance(slots, list):
        return out
    for s in slots:
        if not isinstance(s, dict) or s.get("is_processing"):
            continue
        nt = s.get("next_token")
        nts = nt if isinstance(nt, list) else [nt] if isinstance(nt, dict) else []
        decoded = sum(int(x.get("n_decoded") or 0) for x in nts if isinstance(x, dict))
        n = max(int(s.get("n_past") or 0), int(s.get("n_prompt_tokens") or 0) + decoded)
        if n > 0:
            out.append((f"{s.get('id')}:{s.get('id_task')}:{n}", n))
    return out


@dataclass(frozen=True)
class ServerView:
    state: str
    inflight: int
    url: str | None


class Optimizer:
    def __init__(
        self,
        path: Path,
        settings: Callable[[], OptimizerSettings],
        models: Callable[[], Mapping[str, ModelConfig]],
        history: Callable[[], Awaitable[list[dict[str, Any]]]],
        view: Callable[[str], ServerView | None],
    ) -> None:
        self.path, self.settings, self.models, self.history, self.view = path, settings, models, history, view
        self.data: dict[str, Any] = {"models": {}}
        self.learned: dict[str, Learned] = {}
        self._pending: set[str] = set()  # models a user used since their slots were sampled
        self._dirty = True
        self._seen_models: Mapping[str, ModelConfig] | None = None
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # ---- the scheduler's hooks (synchronous, cheap) -------------------------------------

    def launch_defaults(self, model: ModelConfig) -> tuple[int | None, Profile]:
        learned = self.learned.get(model.name)
        if learned is None or not self.settings().enabled:
            return None, ()
        return learned.ctx, learned.profile

    def note_acquire(self, model: str, user: bool) -> None:
        # Sample only after a user's request: the benchmark's own prompts are not conversations.
        (self._pending.add if user else self._pending.discard)(model)

    def mark_dirty(self) -> None:
        self._dirty = True

    # ---- lifecycle ----------------------------------------------------------------------

    async def load(self) -> None:
        data = await asyncio.to_thread(read_json, self.path, None)
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            self.data = data
        await self.refresh()
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                if await self.sample():
                    self._dirty = True
                if self._dirty or self.models() is not self._seen_models:
                    await self.refresh()
            except Exception:  # keep learning after a bad moment
                log.exception("optimizer_loop_failed")

    async def sample(self) -> bool:
        """GET /slots of models users used, once their requests are done. True if new data."""
        added = False
        for name in list(self._pending):
            v = self.view(name)
            if v is None or v.state not in ("READY", "STARTING"):
                self._pending.discard(name)  # stopped: its slots are gone
            elif v.state == "READY" and v.url is not None and v.inflight == 0:
                self._pending.discard(name)
                try:
                    slots = await self._get_json(v.url + "/slots")
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    log.debug("optimizer_slots_unavailable", model=name, error=str(e))
                    continue
                added |= self._add_samples(name, slot_lengths(slots))
        if added:
            await self._save()
        return added

    def _add_samples(self, model: str, lengths: list[tuple[str, int]]) -> bool:
        entry = self.data["models"].setdefault(model, {"samples": [], "seen": [], "reset_at": 0.0})
        new = [(k, n) for k, n in lengths if k not in entry["seen"]]
        for k, n in new:
            entry["seen"].append(k)
            entry["samples"].append(n)
        del entry["seen"][:-SEEN_KEEP]
        del entry["samples"][:-SAMPLE_WINDOW]
        return bool(new)

    async def _get_json(self, url: str) -> Any:
        if self._http is None:
            self._http = llama_session()
        async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
            if r.status != 200:
                raise ValueError(f"GET {url} answered {r.status}")
            return await r.json(content_type=None)

    async def refresh(self) -> None:
        """Recompute every model's learned values from the history and the samples."""
        self._dirty = False
        models = self.models()
        self._seen_models = models
        lines = await self.history()
        sizes = await asyncio.to_thread(_sizes, models)
        learned = {}
        for name, cfg in models.items():
            entry = self.data["models"].get(name) or {}
            results = usable_results(
                lines, name, str(cfg.path), sizes[name], float(entry.get("reset_at") or 0)
            )
            learned[name] = learn(cfg, results, list(entry.get("samples") or []), self.settings().min_samples)
            old = self.learned.get(name)
            if old is None or (old.ctx, old.profile) != (learned[name].ctx, learned[name].profile):
                if learned[name].ctx is not None or learned[name].profile:
                    log.info(
                        "optimizer_learned",
                        model=name,
                        ctx=learned[name].ctx,
                        profile=dict(learned[name].profile),
                        why=learned[name].ctx_why,
                    )
        self.learned = learned

    async def reset(self, model: str | None) -> list[str]:
        names = [model] if model else list(self.models())
        for name in names:
            self.data["models"][name] = {"samples": [], "seen": [], "reset_at": time.time()}
        await self._save()
        await self.refresh()
        log.info("optimizer_reset", models=names)
        return names

    async def _save(self) -> None:
        snapshot = {  # copies: the thread must not see lists the loop is appending to
            "models": {
                k: {
                    "samples": list(v.get("samples", [])),
                    "seen": list(v.get("seen", [])),
                    "reset_at": v.get("reset_at"),
                }
                for k, v in self.data["models"].items()
            }
        }
        await asyncio.to_thread(write_json_atomic, self.path, snapshot)

    def show(self, model: str | None = None) -> list[dict[str, Any]]:
        enabled, min_samples = self.settings().enabled, self.settings().min_samples
        out = []
        for name, cfg in self.models().items():
            if model is not None and name != model:
                continue
            learned = self.learned.get(name)
            out.append(
                {
                    "model": name,
                    "enabled": enabled,
                    "configured_context": cfg.context,
                    "min_samples": min_samples,
                    "headroom": HEADROOM,
                    "reset_at": (self.data["models"].get(name) or {}).get("reset_at") or None,
                    **(learned.to_dict() if learned else {}),
                }
            )
        return out


def _sizes(models: Mapping[str, ModelConfig]) -> dict[str, int]:
    out = {}
    for name, cfg in models.items():
        try:
            out[name] = cfg.path.stat().st_size
        except OSError:
            out[name] = -1
    return out
