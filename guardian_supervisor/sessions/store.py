"""Session files on disk: KV-slot files written by llama-server plus a manifest beside each.

Layout: `<data_dir>/slots/<model>/` is the model's `--slot-save-path`. A named session NAME is
`NAME.bin` + `NAME.json`; the conversation a slot held when the model last stopped is
`_carry-slot<N>.bin` + `.json` (a leading `_` cannot start a session name, so the two never
collide). llama-server writes `<stem>.partial` first; Guardian renames it, then writes the
manifest atomically, so a crash leaves the old pair or a manifest whose byte count no longer
matches (skipped with a log line, never restored). ik_llama.cpp also writes the slot's token
list to `<file>.tokens.json` beside the slot file and reads it back on restore: it moves,
goes and counts with its slot file.

Everything here blocks on the filesystem: call it through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.atomic import read_json, write_json_atomic
from shared.errors import Code, GuardianError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch only: "$" lets a trailing newline in
STEM_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,79}")  # names, plus the carry stems
CARRY_PREFIX = "_carry-slot"
MANIFEST_VERSION = 1
TOKENS = ".tokens.json"  # ik's token list beside `<file>`: `<file>.tokens.json`
# Every file a session owns, longest suffix first so `x.bin.tokens.json` is not read as `x.bin`.
SESSION_SUFFIXES = (".partial" + TOKENS, ".bin" + TOKENS, ".partial", ".bin")


def session_file(filename: str) -> tuple[str, str] | None:
    """(stem, suffix) of a slot file or its token list, or None for anything else."""
    for suffix in SESSION_SUFFIXES:
        stem = filename[: -len(suffix)]
        if filename.endswith(suffix) and STEM_RE.fullmatch(stem):
            return stem, suffix
    return None


def check_name(name: object) -> str:
    """A session name, or INVALID_PARAMS saying what is allowed."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise GuardianError(
            Code.INVALID_PARAMS,
            f"invalid session name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def carry_stem(slot: int) -> str:
    return f"{CARRY_PREFIX}{slot}"


@dataclass
class Manifest:
    """What a slot file was saved from; a restore needs all of it to match."""

    name: str  # the session name, or the carry stem
    kind: str  # "named" or "carry"
    model: str
    model_path: str
    model_size: int
    model_mtime_ns: int
    ctx: int  # context per slot of the server that saved it
    kv_type: str
    flavor: str  # "ik" or "upstream": the two forks' state files need not agree
    slot: int
    n_tokens: int
    bytes: int
    created: float
    used: float
    version: int = MANIFEST_VERSION
    owner: str | None = None  # id of the API key that saved it; None: saved without a key

    @property
    def stem(self) -> str:
        return self.name

    @classmethod
    def from_json(cls, data: Any) -> Manifest | None:
        """None for anything that is not a manifest this version understands."""
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            return None
        try:
            kwargs = {f.name: data[f.name] for f in fields(cls) if f.name != "owner"}
        except KeyError:
            return None
        m = cls(**kwargs, owner=data.get("owner"))
        ints = (m.model_size, m.model_mtime_ns, m.ctx, m.slot, m.n_tokens, m.bytes)
        if not all(isinstance(x, int) for x in ints) or not isinstance(m.name, str):
            return None
        if m.owner is not None and not isinstance(m.owner, str):
            return None
        return m

    def public(self) -> dict[str, Any]:
        """The view clients get: no internal file details beyond size."""
        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.model,
            "slot": self.slot,
            "n_tokens": self.n_tokens,
            "bytes": self.bytes,
            "ctx": self.ctx,
            "kv_type": self.kv_type,
            "created_at": _iso(self.created),
            "used_at": _iso(self.used),
            "owner": self.owner,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Target:
    """What a restore would go into: the model file now, and the running server's settings."""

    model: str
    model_path: str
    model_size: int
    model_mtime_ns: int
    ctx: int | None
    kv_type: str
    flavor: str
    parallel: int


def model_fingerprint(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def file_mismatch(m: Manifest, t: Target) -> str | None:
    """Why `m` does not belong to the model file `t` names (checked before loading anything)."""
    if m.model != t.model:
        return f"it was saved from model '{m.model}', not '{t.model}'"
    if m.model_path != t.model_path:
        return f"model '{t.model}' now points at {t.model_path}; the session was saved from {m.model_path}"
    if (m.model_size, m.model_mtime_ns) != (t.model_size, t.model_mtime_ns):
        return f"the GGUF file {t.model_path} changed (size or modification time) since the session was saved"
    if m.flavor != t.flavor:
        return f"it was saved by a {m.flavor} llama-server; '{t.model}' now runs on {t.flavor}"
    return None


def mismatch(m: Manifest, t: Target) -> str | None:
    """Why `m` cannot be restored into the running server `t`; None if it can."""
    problem = file_mismatch(m, t)
    if problem is not None:
        return problem
    if t.ctx != m.ctx:
        return f"it was saved with a context of {m.ctx} tokens per slot; '{t.model}' runs with {t.ctx}"
    if t.kv_type != m.kv_type:
        return f"it was saved with KV cache type {m.kv_type}; '{t.model}' runs with {t.kv_type}"
    return None


class SessionStore:
    """The files under `<data_dir>/slots/`. Paths never leave their model's directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def model_dir(self, model: str) -> Path:
        d = self.root / model
        if d.parent != self.root or model in ("", ".", "..") or "/" in model:
            raise GuardianError(Code.INVALID_PARAMS, f"model name {model!r} cannot name a directory")
        if d.is_symlink() or self.root.is_symlink():  # deletes there would land in the target
            raise GuardianError(
                Code.INVALID_PARAMS, f"{d} is (under) a symbolic link; Guardian does not follow links here"
            )
        return d

    def path(self, model: str, stem: str, suffix: str) -> Path:
        """`<model dir>/<stem><suffix>`, refusing anything that would resolve elsewhere."""
        d = self.model_dir(model)
        p = d / f"{stem}{suffix}"
        if not STEM_RE.fullmatch(stem) or p.parent != d:
            raise GuardianError(Code.INVALID_PARAMS, f"session file name {stem!r} is not allowed")
        return p

    # ---- reading -----------------------------------------------------------------------

    def read(self, model: str, stem: str) -> Manifest | None:
        try:
            return Manifest.from_json(read_json(self.path(model, stem, ".json")))
        except (OSError, ValueError, GuardianError):  # unreadable, or not a name Guardian writes
            return None

    def entries(self, model: str | None = None) -> list[Manifest]:
        """Every readable manifest (one model or all), oldest use first."""
        dirs = [self.model_dir(model)] if model else _subdirs(self.root)
        out = []
        for d in dirs:
            with contextlib.suppress(OSError):
                for p in d.glob("*.json"):
                    if p.name.endswith(TOKENS):
                        continue  # ik's token list, not a manifest
                    m = self.read(d.name, p.stem)
                    if m is not None and m.model == d.name:
                        out.append(m)
        return sorted(out, key=lambda m: (m.used, m.name))

    def find(self, name: str) -> Manifest | None:
        """The named session NAME, whichever model saved it."""
        check_name(name)
        for d in _subdirs(self.root):
            m = self.read(d.name, name)
            if m is not None and m.kind == "named" and m.model == d.name:
                return m
        return None

    def intact(self, m: Manifest) -> str | None:
        """Why the slot file of `m` cannot be used as it stands (missing, size changed)."""
        try:
            size = self.path(m.model, m.stem, ".bin").stat().st_size
        except OSError:
            return "its slot file is missing"
        if size != m.bytes:
            return f"its slot file is {size} bytes, the manifest says {m.bytes} (damaged or half-written)"
        return None

    # ---- writing -----------------------------------------------------------------------

    def commit(self, m: Manifest) -> Manifest:
        """Move `<stem>.partial` (just written by llama-server) into place, then the manifest."""
        partial = self.path(m.model, m.stem, ".partial")
        final = self.path(m.model, m.stem, ".bin")
        m.bytes = partial.stat().st_size
        tokens = self.path(m.model, m.stem, ".partial" + TOKENS)
        if tokens.exists():
            os.replace(tokens, self.path(m.model, m.stem, ".bin" + TOKENS))
        else:  # upstream writes none: an older one must not sit beside the new slot file
            with contextlib.suppress(FileNotFoundError):
                self.path(m.model, m.stem, ".bin" + TOKENS).unlink()
        os.replace(partial, final)
        write_json_atomic(self.path(m.model, m.stem, ".json"), asdict(m), mode=0o600)
        return m

    def touch(self, m: Manifest, when: float | None = None) -> None:
        """Record a use (LRU order); a manifest that vanished meanwhile stays vanished."""
        m.used = time.time() if when is None else when
        if self.path(m.model, m.stem, ".json").exists():
            write_json_atomic(self.path(m.model, m.stem, ".json"), asdict(m), mode=0o600)

    def delete(self, model: str, stem: str) -> bool:
        """Remove a session's files; the manifest first, so no manifest points at nothing."""
        found = False
        for suffix in (".json", *SESSION_SUFFIXES):
            with contextlib.suppress(FileNotFoundError):
                self.path(model, stem, suffix).unlink()
                found = True
        return found

    def discard_partial(self, model: str, stem: str) -> None:
        for suffix in (".partial", ".partial" + TOKENS):
            with contextlib.suppress(FileNotFoundError):
                self.path(model, stem, suffix).unlink()

    def enforce_cap(self, model: str, max_bytes: int) -> list[str]:
        """Delete least recently used sessions of `model` until its files fit in `max_bytes`.

        Slot files without a manifest (left by a crash) count too and go first. Returns the
        stems removed.
        """
        d = self.model_dir(model)
        by_stem: dict[str, tuple[float, int]] = {}  # stem → (last use, bytes)
        with contextlib.suppress(OSError):
            for p in d.iterdir():
                found = session_file(p.name)
                st = p.lstat()  # a symlink is never a session file: not followed, not deleted
                if found is None or not stat.S_ISREG(st.st_mode):
                    continue  # not a file Guardian or llama-server wrote for a session
                stem, suffix = found
                size = st.st_size
                m = self.read(model, stem) if suffix == ".bin" else None
                used = m.used if m is not None else 0.0  # orphans first
                last, total = by_stem.get(stem, (used, 0))
                by_stem[stem] = (max(last, used), total + size)
        total = sum(size for _, size in by_stem.values())
        removed = []
        for stem, (_, size) in sorted(by_stem.items(), key=lambda kv: (kv[1][0], kv[0])):
            if total <= max_bytes:
                break
            self.delete(model, stem)
            total -= size
            removed.append(stem)
        return removed

    def total_bytes(self, model: str) -> int:
        with contextlib.suppress(OSError):
            sizes = (p.lstat() for p in self.model_dir(model).iterdir())
            return sum(st.st_size for st in sizes if stat.S_ISREG(st.st_mode))
        return 0


def _subdirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
