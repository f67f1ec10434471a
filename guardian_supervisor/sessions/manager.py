"""Sessions: llama-server KV-cache slots saved by name, and carried across model swaps.

A lifecycle hook on the scheduler: before a model stops (swap, idle unload, unload,
shutdown) the slots that hold a conversation are saved as carry-over files; when the model
starts again they are restored before requests are let in, so the next turn of the same
conversation reuses the cache instead of re-reading the whole prompt. Named sessions are the
same files saved and restored on request (`sessions.*` RPC, guardianctl, the proxy's
/guardian/sessions routes).

A restore goes only into the same GGUF file (path, size, mtime), context per slot, KV cache
type and fork; anything else is skipped with a log line. Each restore is checked (see
check.py) because llama-server can report one as done and not use it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from guardian_supervisor.memory.gguf_info import GGUFError, ModelInfo, read_model_info
from guardian_supervisor.metrics import SupervisorStats
from guardian_supervisor.models.launcher import llama_session
from guardian_supervisor.models.runtime import ModelRuntime, State
from guardian_supervisor.sessions.check import (
    SLOT_ERRORS,
    Restored,
    judge_first_use,
    restore_checked,
    watch_first_use,
)
from guardian_supervisor.sessions.slots import (
    SlotClient,
    holds_conversation,
    pick_slot,
    save_bound,
)
from guardian_supervisor.sessions.store import (
    Manifest,
    SessionStore,
    Target,
    carry_stem,
    check_name,
    file_mismatch,
    mismatch,
    model_fingerprint,
)
from shared.config import ModelConfig
from shared.errors import Code, GuardianError

if TYPE_CHECKING:
    from guardian_supervisor.models.scheduler import Scheduler

log = structlog.get_logger("sessions")


class SessionManager:
    """Owns `<data_dir>/slots/`: carry-over on model start/stop, named sessions on request."""

    def __init__(self, scheduler: Scheduler, stats: SupervisorStats | None = None) -> None:
        self.scheduler = scheduler
        self.stats = stats or SupervisorStats()
        self._http: aiohttp.ClientSession | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._restored: dict[str, dict[int, Restored]] = {}  # model → slot → what went in
        self._verifiers: dict[str, asyncio.Task[None]] = {}
        self._infos: dict[tuple[str, int], ModelInfo] = {}  # for the save's size bound

    @property
    def store(self) -> SessionStore:
        return SessionStore(self.scheduler.config.data_dir / "slots")

    # ---- lifecycle hook -----------------------------------------------------------------

    async def model_started(self, rt: ModelRuntime) -> None:
        """Restore the carry-over files of this model (requests wait until this returns)."""
        self._restored[rt.name] = {}
        if not self.scheduler.config.settings.sessions.carry_over or _internal(rt):
            return
        carry = [m for m in await asyncio.to_thread(self.store.entries, rt.name) if m.kind == "carry"]
        if not carry:
            return
        target = await self._target(rt.config, rt.ctx)
        client = self._client(rt)
        async with self._lock(rt.name):
            for m in carry:
                problem = mismatch(m, target) or await asyncio.to_thread(self.store.intact, m)
                if problem is None and m.slot >= target.parallel:
                    problem = f"it was slot {m.slot}; '{rt.name}' now runs {target.parallel} slot(s)"
                if problem is not None:
                    log.info("session_skipped", model=rt.name, session=m.name, reason=problem)
                    continue
                try:
                    await self._restore_into(client, rt, m, m.slot)
                except TimeoutError:
                    # No reply, twice (ik can lose it): the file may be fine, so keep it and go on.
                    # The slot may hold the conversation or not; nothing ik reports tells which.
                    log.warning(
                        "session_restore_skipped",
                        model=rt.name,
                        session=m.name,
                        reason=f"llama-server answered neither restore of {m.bytes} bytes in time; "
                        "unless it restored anyway, the conversation is read again",
                    )
                except SLOT_ERRORS as e:
                    # A damaged file: drop it; the conversation is simply read again.
                    log.warning("session_restore_failed", model=rt.name, session=m.name, error=str(e))
                    await asyncio.to_thread(self.store.delete, rt.name, m.stem)
        if any(w.model == rt.name for w in self.scheduler.queue):  # the requests that started it
            self.on_acquire(rt.name, True)

    async def model_stopping(self, rt: ModelRuntime, reason: str) -> None:
        """Save every slot that holds a conversation, while the server still runs."""
        self._stop_verifier(rt.name)
        restored = self._restored.pop(rt.name, {})
        settings = self.scheduler.config.settings.sessions
        if not settings.carry_over or reason.startswith("removed from") or _internal(rt):
            return
        client = self._client(rt)
        try:
            slots = await client.slots()
        except SLOT_ERRORS as e:
            log.warning("session_carry_failed", model=rt.name, error=f"GET /slots: {e}")
            return
        await judge_first_use(rt.name, client, slots, restored)
        target = await self._target(rt.config, rt.ctx)
        async with self._lock(rt.name):
            for s in slots:
                if s.processing or not holds_conversation(s):
                    continue
                prev = restored.get(s.id)
                if (
                    prev is not None
                    and prev.manifest.kind == "carry"
                    and (s.id_task, s.n_tokens) == (prev.id_task, prev.n_tokens)
                    and await asyncio.to_thread(self.store.intact, prev.manifest) is None
                ):  # restored and never used since: the file on disk is already this slot
                    await asyncio.to_thread(self.store.touch, prev.manifest)
                    continue
                t0 = time.monotonic()
                try:
                    m = await self._save_slot(client, rt, target, carry_stem(s.id), "carry", s.id, s.n_tokens)
                except TimeoutError:
                    log.warning(
                        "session_carry_failed",
                        model=rt.name,
                        slot=s.id,
                        error="llama-server answered neither slot save in time; carry-over skipped",
                    )
                    continue
                except (*SLOT_ERRORS, OSError) as e:
                    log.warning("session_carry_failed", model=rt.name, slot=s.id, error=str(e))
                    continue
                if m is not None:
                    ms = round((time.monotonic() - t0) * 1000, 1)
                    log.info(
                        "session_carried", model=rt.name, slot=s.id, n_tokens=m.n_tokens, bytes=m.bytes, ms=ms
                    )
            await self._enforce_cap(rt.name)

    def on_acquire(self, model: str, user: bool) -> None:
        """A request for `model` is coming: watch whether it reuses a restored slot."""
        pending = any(r.verdict is None for r in self._restored.get(model, {}).values())
        task = self._verifiers.get(model)
        rt = self.scheduler.runtimes.get(model)
        if pending and rt is not None and rt.port is not None and (task is None or task.done()):
            self._verifiers[model] = asyncio.create_task(
                watch_first_use(rt, self._client(rt), lambda: self._restored.get(model, {}))
            )

    async def close(self) -> None:
        for name in list(self._verifiers):
            self._stop_verifier(name)
        if self._http is not None:
            await self._http.close()

    # ---- named sessions -----------------------------------------------------------------

    async def save(
        self, name: str, model: str, slot: int | None, conn_id: int, owner: str | None = None
    ) -> dict[str, Any]:
        """`owner`: the saving key's id; another owner's session of that name is not replaced."""
        check_name(name)
        cfg = self.scheduler.resolve(model)
        rt = self.scheduler.runtimes[cfg.name]
        if rt.state is not State.READY:
            raise GuardianError(
                Code.CONFLICT,
                f"model '{cfg.name}' is not loaded ({rt.state}): a session is saved from a running model's "
                f"KV cache; send it a request (or 'guardianctl load {cfg.name}') and save again",
                {"model": cfg.name},
            )
        _check_slot(slot, cfg)
        lease, rt = await self.scheduler.acquire(cfg.name, conn_id)  # a lease: no eviction meanwhile
        try:
            client = self._client(rt)
            slots = await client.slots()
            # A slot restored and not used since holds its conversation even where the server
            # lists no token count for it (ik_llama.cpp): count the restore's tokens then.
            restored = self._restored.get(cfg.name, {})
            slots = [
                replace(s, n_tokens=restored[s.id].n_tokens)
                if s.id in restored and not holds_conversation(s)
                else s
                for s in slots
            ]
            chosen = next((s for s in slots if s.id == slot), None) if slot is not None else pick_slot(slots)
            if chosen is None or not holds_conversation(chosen):
                where = f"slot {slot}" if slot is not None else "any slot"
                raise GuardianError(
                    Code.CONFLICT, f"model '{cfg.name}' holds no conversation in {where}; nothing to save"
                )
            target = await self._target(cfg, rt.ctx)
            async with self._lock(cfg.name):
                old = await asyncio.to_thread(self.store.find, name)
                if old is not None and owner is not None and old.owner != owner:
                    raise GuardianError(
                        Code.CONFLICT, f"a session named '{name}' belongs to another key; pick another name"
                    )
                t0 = time.monotonic()
                m = await self._save_slot(
                    client, rt, target, name, "named", chosen.id, chosen.n_tokens, owner
                )
                if m is None:
                    raise GuardianError(
                        Code.CONFLICT, f"slot {chosen.id} of '{cfg.name}' was empty when saved"
                    )
                if old is not None and old.model != cfg.name:  # a name is one session across models
                    await asyncio.to_thread(self.store.delete, old.model, old.stem)
                removed = await self._enforce_cap(cfg.name)
            if name in removed:
                cap = self.scheduler.config.settings.sessions.max_mb_per_model
                raise GuardianError(
                    Code.DOES_NOT_FIT,
                    f"session '{name}' is {m.bytes / 2**20:.1f} MiB, more than sessions.max_mb_per_model "
                    f"({cap} MiB) allows for '{cfg.name}'; it was not kept",
                )
        except SLOT_ERRORS as e:
            raise GuardianError(Code.LOAD_FAILED, f"llama-server could not save '{cfg.name}': {e}") from e
        finally:
            self.scheduler.release(lease.id)
        log.info(
            "session_saved", session=name, model=cfg.name, slot=m.slot, n_tokens=m.n_tokens, bytes=m.bytes
        )
        return {**m.public(), "save_ms": round((time.monotonic() - t0) * 1000, 2)}

    async def restore(
        self,
        name: str,
        conn_id: int,
        model: str | None = None,
        slot: int | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        m = await self._find(name, owner)
        if model is not None and self.scheduler.resolve(model).name != m.model:
            raise GuardianError(
                Code.CONFLICT,
                f"session '{name}' was saved from model '{m.model}'; it cannot be restored into "
                f"'{self.scheduler.resolve(model).name}' (a KV cache belongs to one model file)",
            )
        cfg = self.scheduler.config.models.get(m.model)
        if cfg is None:
            raise GuardianError(
                Code.MODEL_NOT_FOUND,
                f"session '{name}' belongs to model '{m.model}', which is no longer configured",
            )
        _check_slot(slot, cfg)
        problem = file_mismatch(m, await self._target(cfg, None)) or await asyncio.to_thread(
            self.store.intact, m
        )
        if problem is not None:
            raise GuardianError(Code.CONFLICT, f"cannot restore session '{name}': {problem}")
        into = slot if slot is not None else (m.slot if m.slot < cfg.parallel else 0)
        was_loaded = self.scheduler.runtimes[cfg.name].state is State.READY
        lease, rt = await self.scheduler.acquire(cfg.name, conn_id, ctx=m.ctx)  # loads it if needed
        try:
            problem = mismatch(m, await self._target(cfg, rt.ctx))
            if problem is not None:
                raise GuardianError(
                    Code.CONFLICT,
                    f"cannot restore session '{name}': {problem}; unload '{cfg.name}' and restore again "
                    f"to start it with a context of {m.ctx}",
                )
            async with self._lock(cfg.name):
                r = await self._restore_into(self._client(rt), rt, m, into)
        except SLOT_ERRORS as e:
            raise GuardianError(
                Code.LOAD_FAILED,
                f"llama-server could not restore session '{name}' into slot {into} of '{cfg.name}': {e}",
            ) from e
        finally:
            self.scheduler.release(lease.id)
        return {**m.public(), **r, "loaded_model": not was_loaded}

    async def list_sessions(
        self, model: str | None = None, include_carry: bool = False, owner: str | None = None
    ) -> list[dict[str, Any]]:
        """`owner` given: only that key's sessions (none of the carry files)."""
        name = self.scheduler.resolve(model).name if model else None
        entries = await asyncio.to_thread(self.store.entries, name)
        if owner is not None:
            return [m.public() for m in entries if m.kind == "named" and m.owner == owner]
        return [m.public() for m in entries if include_carry or m.kind == "named"]

    async def info(self, name: str, owner: str | None = None) -> dict[str, Any]:
        return (await self._find(name, owner)).public()

    async def delete(self, name: str, owner: str | None = None) -> dict[str, Any]:
        m = await self._find(name, owner)
        async with self._lock(m.model):
            await asyncio.to_thread(self.store.delete, m.model, m.stem)
        log.info("session_deleted", session=name, model=m.model)
        return {"deleted": name, "model": m.model}

    # ---- effects ------------------------------------------------------------------------

    async def _restore_into(
        self, client: SlotClient, rt: ModelRuntime, m: Manifest, slot: int
    ) -> dict[str, Any]:
        restored, out = await restore_checked(client, rt.name, m, slot)
        self._restored.setdefault(rt.name, {})[slot] = restored
        self.stats.note_restore(rt.name, int(out.get("n_restored") or 0))
        await asyncio.to_thread(self.store.touch, m)
        log.info("session_restored", model=rt.name, session=m.name, **out)
        return out

    async def _save_slot(
        self,
        client: SlotClient,
        rt: ModelRuntime,
        target: Target,
        stem: str,
        kind: str,
        slot: int,
        n_tokens: int | None,
        owner: str | None = None,
    ) -> Manifest | None:
        """llama-server writes `<stem>.partial`; it becomes `<stem>.bin` + manifest here."""
        await asyncio.to_thread(self.store.discard_partial, rt.name, stem)
        tokens = n_tokens if n_tokens is not None else (target.ctx or 0) * target.parallel
        bound = save_bound(await self._model_info(rt.config), target.kv_type, target.flavor, tokens)
        reply = await client.action(slot, "save", stem + ".partial", nbytes=bound)
        n_saved = int(reply.get("n_saved", 0))
        if n_saved <= 0:
            await asyncio.to_thread(self.store.discard_partial, rt.name, stem)
            return None
        now = time.time()
        m = Manifest(
            name=stem,
            kind=kind,
            model=rt.name,
            model_path=target.model_path,
            model_size=target.model_size,
            model_mtime_ns=target.model_mtime_ns,
            ctx=int(rt.ctx or 0),
            kv_type=target.kv_type,
            flavor=target.flavor,
            slot=slot,
            n_tokens=n_saved,
            bytes=0,
            created=now,
            used=now,
            owner=owner,
        )
        committed = await asyncio.to_thread(self.store.commit, m)
        self.stats.note_save(rt.name, kind)
        return committed

    async def _enforce_cap(self, model: str) -> list[str]:
        cap = self.scheduler.config.settings.sessions.max_mb_per_model * 2**20
        removed = await asyncio.to_thread(self.store.enforce_cap, model, cap)
        if removed:
            log.info("sessions_evicted", model=model, removed=removed, cap_mb=cap // 2**20)
        return removed

    # ---- helpers ------------------------------------------------------------------------

    async def _find(self, name: str, owner: str | None = None) -> Manifest:
        """The session; another key's (when `owner` is given) is as absent as a missing one."""
        m = await asyncio.to_thread(self.store.find, check_name(name))
        if m is None or (owner is not None and m.owner != owner):
            raise GuardianError(
                Code.NOT_FOUND, f"no session named '{name}'; 'guardianctl session list' shows them"
            )
        return m

    async def _target(self, cfg: ModelConfig, ctx: int | None) -> Target:
        try:
            size, mtime = await asyncio.to_thread(model_fingerprint, cfg.path)
        except OSError as e:
            raise GuardianError(Code.LOAD_FAILED, f"cannot read model file of '{cfg.name}': {e}") from e
        return Target(
            model=cfg.name,
            model_path=str(cfg.path),
            model_size=size,
            model_mtime_ns=mtime,
            ctx=ctx,
            kv_type=cfg.kv_type,
            flavor=self.scheduler.config.backend_of(cfg).flavor,
            parallel=cfg.parallel,
        )

    async def _model_info(self, cfg: ModelConfig) -> ModelInfo | None:
        """The GGUF's layout (read once per file version), or None where it cannot be read."""
        try:
            key = (str(cfg.path), (await asyncio.to_thread(cfg.path.stat)).st_mtime_ns)
            if key not in self._infos:
                self._infos[key] = await asyncio.to_thread(read_model_info, cfg.path)
        except (GGUFError, OSError):
            return None
        return self._infos[key]

    def _client(self, rt: ModelRuntime) -> SlotClient:
        if self._http is None:
            self._http = llama_session()
        return SlotClient(self._http, f"http://127.0.0.1:{rt.port}")

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    def _stop_verifier(self, model: str) -> None:
        task = self._verifiers.pop(model, None)
        if task is not None and not task.done():
            task.cancel()


def _check_slot(slot: int | None, cfg: ModelConfig) -> None:
    if slot is None:
        return
    if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < cfg.parallel:
        raise GuardianError(
            Code.INVALID_PARAMS,
            f"slot must be an integer from 0 to {cfg.parallel - 1} ('{cfg.name}' runs {cfg.parallel} slot(s))",
        )


def _internal(rt: ModelRuntime) -> bool:
    """A server Guardian started for its own work (a benchmark cell): its slots hold no
    user's conversation, and must not overwrite the carried one."""
    return rt.internal
