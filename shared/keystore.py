"""API keys: creation, hash-only storage, constant-time verification, hot reload.

Keys are `flip_` + secrets.token_urlsafe(32) (256 bits of entropy). Only a SHA-256 of the
whole key is stored: a slow KDF protects low-entropy passwords, and would only cost time on
every request here. The first 8 characters after the prefix are a non-secret id that finds
the record without scanning; the hash is then compared in constant time.

The store is one JSON file (mode 0600) that several processes write (the key CLI, the
supervisor's keys.* RPC, the proxy flushing last-use times). Every write happens under an
exclusive flock on a sibling `.lock` file and starts from the file's current contents, never
from a possibly stale in-memory copy, so no writer undoes another's creation or revocation.
Readers need no lock: shared.atomic renames complete files into place.

This module has no aiohttp dependency so the supervisor and the CLI can import it cheaply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.atomic import write_json_atomic
from shared.errors import Code, GuardianError

KEYS_FILENAME = "api_keys.json"


def keys_path(data_dir: Path | str) -> Path:
    """Where the key store lives under a data directory (the proxy, supervisor and CLI agree)."""
    return Path(data_dir) / KEYS_FILENAME


log = logging.getLogger(__name__)

KEY_PREFIX = "flip_"
ID_LEN = 8
FILE_VERSION = 1
FILE_MODE = 0o600
# How often the proxy may stat the file; revocations must be seen within a second.
REFRESH_INTERVAL_S = 0.25
UNKNOWN_RECHECK_S = 0.05
# last_used_at is bookkeeping, not security: batch it instead of writing per request.
FLUSH_INTERVAL_S = 5.0

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DURATION_RE = re.compile(r"(\d+)\s*([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_HASH_SCHEME = "sha256:"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_ts(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{what}: not an ISO timestamp: {value!r}") from None
    # Naive timestamps in a hand-edited file are taken as UTC, like everything we write.
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def hash_key(secret: str) -> str:
    """The stored form of a key: SHA-256 hex with a scheme prefix (room for a future change)."""
    return _HASH_SCHEME + hashlib.sha256(secret.encode("ascii")).hexdigest()


def normalize_model(name: str) -> str:
    """`llama3` and `llama3:latest` are the same model to Ollama clients."""
    name = name.strip()
    return name[: -len(":latest")] if name.endswith(":latest") else name


def model_allowed(scope: Sequence[str] | None, model: str) -> bool:
    """None means every model; otherwise the model must be listed (':latest' ignored)."""
    if scope is None:
        return True
    wanted = normalize_model(model)
    return any(normalize_model(m) == wanted for m in scope)


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise GuardianError(
            Code.INVALID_PARAMS,
            f"invalid key name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ -",
        )
    return name


def parse_models(models: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """A scope list (or comma-separated string); None means all models."""
    if models is None:
        return None
    items = models.split(",") if isinstance(models, str) else list(models)
    out: list[str] = []
    for m in items:
        if not isinstance(m, str):
            raise GuardianError(Code.INVALID_PARAMS, f"model names must be strings, got {m!r}")
        m = m.strip()
        if any(c.isspace() or c == "," or not c.isprintable() for c in m):
            raise GuardianError(Code.INVALID_PARAMS, f"invalid model name {m!r} in scope")
        if m and m not in out:
            out.append(m)
    if not out:
        # An empty scope would make a key that can do nothing; almost surely a mistake.
        raise GuardianError(Code.INVALID_PARAMS, "empty model scope: leave --models out to allow every model")
    return tuple(out)


def parse_expires(expires: str | None, now: datetime | None = None) -> datetime | None:
    """'30d', '12h', '90m', '2w', an ISO date (midnight UTC) or ISO datetime (naive = UTC)."""
    if expires is None:
        return None
    text = expires.strip()
    if text.lower() in ("", "never", "none"):
        return None
    now = now or _now()
    m = _DURATION_RE.fullmatch(text.lower())
    if m:
        amount = int(m.group(1))
        if amount <= 0:
            raise GuardianError(Code.INVALID_PARAMS, f"expiry {expires!r} must be a positive duration")
        return now + timedelta(**{_DURATION_UNITS[m.group(2)]: amount})
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            when = datetime(d.year, d.month, d.day, tzinfo=UTC)
        else:
            when = datetime.fromisoformat(text)
            when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    except ValueError:
        raise GuardianError(
            Code.INVALID_PARAMS,
            f"invalid expiry {expires!r}: use a duration like 30d, 12h, 90m, 2w or an ISO date",
        ) from None
    if when <= now:
        raise GuardianError(Code.INVALID_PARAMS, f"expiry {expires!r} is in the past")
    return when


@dataclass(frozen=True)
class KeyRecord:
    """One stored key. Never holds the secret; the hash is kept out of repr and to_public()."""

    name: str
    id: str
    hash: str = field(repr=False)
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    models: tuple[str, ...] | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or _now()) >= self.expires_at

    def allows(self, model: str) -> bool:
        return model_allowed(self.models, model)

    def to_public(self) -> dict[str, Any]:
        """What list/CLI/RPC may show: everything but the hash."""
        return {
            "name": self.name,
            "id": self.id,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "last_used_at": _iso(self.last_used_at),
            "models": list(self.models) if self.models is not None else None,
            "expired": self.expired(),
        }

    def to_json(self) -> dict[str, Any]:
        """The on-disk form (includes the hash, never the secret)."""
        d = self.to_public()
        del d["expired"]
        d["hash"] = self.hash
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KeyRecord:
        models = d.get("models")
        created = _parse_ts(d["created_at"], "created_at")
        if created is None:
            raise ValueError(f"key {d.get('name')!r}: created_at is missing")
        return cls(
            name=str(d["name"]),
            id=str(d["id"]),
            hash=str(d["hash"]),
            created_at=created,
            expires_at=_parse_ts(d.get("expires_at"), "expires_at"),
            last_used_at=_parse_ts(d.get("last_used_at"), "last_used_at"),
            models=tuple(str(m) for m in models) if models is not None else None,
        )


# A file's identity for change detection: atomic renames always change the inode.
_Sig = tuple[int, int, int]


def _sig(st: os.stat_result) -> _Sig:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class KeyStore:
    """API keys in one JSON file, shared safely between processes.

    verify()/allows()/touch()/any_keys() are pure in-memory and safe on the event loop.
    Everything touching the disk is synchronous; from async code use maybe_refresh() and
    flush_async(), which hop to a thread.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        # Exists once any key ever did: then an emptied or deleted store keeps auth on
        # (fail closed) until settings say auth.required: false.
        self.seen_path = self.path.with_name(self.path.name + ".seen")
        self._seen = False
        # Replaced wholesale on reload (one reference swap), so readers never see a half state.
        self._records: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._sig: _Sig | None = None
        self._last_check = 0.0
        self._last_unknown_check = 0.0
        self._refreshing: asyncio.Future[bool] | None = None
        # touch() data waiting to be written; guarded because flush() runs in a thread.
        self._mem_lock = threading.Lock()
        self._pending: dict[str, datetime] = {}
        self._last_flush = time.monotonic()
        self._flushing = False
        self._load_from_disk(strict=True)

    # ---- reading -------------------------------------------------------------------------

    def _read_file(self) -> tuple[dict[str, KeyRecord], _Sig | None]:
        """Parse the file and return it with the signature of exactly what was read."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return {}, None
        with f:
            st = os.fstat(f.fileno())
            raw = f.read()
        try:
            doc = json.loads(raw) if raw.strip() else {"keys": []}
            if not isinstance(doc, dict) or not isinstance(doc.get("keys", []), list):
                raise ValueError("expected an object with a 'keys' list")
            records: dict[str, KeyRecord] = {}
            for entry in doc.get("keys", []):
                rec = KeyRecord.from_json(entry)
                records[rec.name] = rec
        except (ValueError, KeyError, TypeError) as e:
            raise GuardianError(Code.CONFIG_INVALID, f"{self.path}: unreadable API key store: {e}") from None
        return records, _sig(st)

    def _install(self, records: dict[str, KeyRecord], sig: _Sig | None) -> None:
        """Blocking (the marker): called at start, in refresh threads and under the lock."""
        by_id = {r.id: r for r in records.values()}
        if records and not self._seen:
            self._mark_seen()
        self._seen = self._seen or bool(records) or self.seen_path.exists()
        self._records, self._by_id, self._sig = records, by_id, sig

    def _mark_seen(self) -> None:
        try:
            fd = os.open(self.seen_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            os.close(fd)
        except OSError:
            log.exception("cannot write %s; auth stays on only while this process runs", self.seen_path)

    def _load_from_disk(self, strict: bool) -> bool:
        try:
            records, sig = self._read_file()
        except GuardianError:
            if strict:
                raise
            # Keep serving the last good keys; remember the signature to log only once.
            log.exception("keeping previously loaded API keys")
            try:
                self._sig = _sig(os.stat(self.path))
            except OSError:
                pass
            return False
        self._install(records, sig)
        return True

    def refresh_if_changed(self, force: bool = False) -> bool:
        """Reload if the file changed (inode/mtime/size). Rate-limited unless `force`.

        Returns True when a reload happened. Blocking: call through maybe_refresh() on a loop.
        """
        now = time.monotonic()
        if not force and now - self._last_check < REFRESH_INTERVAL_S:
            return False
        self._last_check = now
        try:
            sig: _Sig | None = _sig(os.stat(self.path))
        except FileNotFoundError:
            sig = None
        if sig == self._sig:
            return False
        return self._load_from_disk(strict=False)

    async def maybe_refresh(self) -> None:
        """Cheap when called often: at most one stat+reload per REFRESH_INTERVAL_S, in a thread.

        Concurrent callers share one in-flight refresh instead of stacking threads.
        """
        if self._refreshing is not None and self._refreshing.get_loop() is not asyncio.get_running_loop():
            self._refreshing = None  # left over from a loop that has since closed
        if self._refreshing is None and time.monotonic() - self._last_check < REFRESH_INTERVAL_S:
            return
        if self._refreshing is None:
            self._last_check = time.monotonic()
            fut = asyncio.ensure_future(asyncio.to_thread(self.refresh_if_changed, True))
            self._refreshing = fut
            fut.add_done_callback(self._refresh_done)
        # shield: a cancelled request must not cancel the refresh others are waiting for.
        try:
            await asyncio.shield(self._refreshing)
        except Exception:
            pass  # logged by _refresh_done; keep serving the keys already loaded

    async def refresh_for_unknown(self) -> bool:
        """An unknown key may have been created a moment ago (after the last look, which is
        rate-limited): look at the file once more, at most every UNKNOWN_RECHECK_S, so unknown
        keys sent in a flood cost no more than that. True when the keys were reloaded."""
        now = time.monotonic()
        if now - self._last_unknown_check < UNKNOWN_RECHECK_S:
            return False
        self._last_unknown_check = now
        try:
            return await asyncio.to_thread(self.refresh_if_changed, True)
        except Exception:
            log.error("API key refresh failed", exc_info=True)
            return False

    def _refresh_done(self, fut: asyncio.Future[bool]) -> None:
        self._refreshing = None
        if not fut.cancelled() and fut.exception() is not None:
            log.error("API key refresh failed", exc_info=fut.exception())

    # ---- in-memory queries (hot path) ----------------------------------------------------

    def check(self, secret: str) -> tuple[KeyRecord | None, str]:
        """Verify and say why not: (record, "ok") or (None, "malformed"|"unknown"|"expired")."""
        if not secret.startswith(KEY_PREFIX) or not secret.isascii() or len(secret) > 512:
            return None, "malformed"
        rec = self._by_id.get(secret[len(KEY_PREFIX) : len(KEY_PREFIX) + ID_LEN])
        if rec is None or not hmac.compare_digest(hash_key(secret), rec.hash):
            return None, "unknown"
        if rec.expired():
            return None, "expired"
        return rec, "ok"

    def verify(self, secret: str) -> KeyRecord | None:
        """The record for a valid key; None if unknown, wrong, expired or revoked."""
        return self.check(secret)[0]

    def allows(self, record: KeyRecord, model: str) -> bool:
        return record.allows(model)

    def any_keys(self) -> bool:
        """True if any key exists, expired ones included."""
        return bool(self._records)

    def keys_seen(self) -> bool:
        """True once any key has existed (here or in an earlier run): revoking the last key,
        or emptying or deleting the file, must not switch auth off."""
        return self._seen

    def list(self) -> list[KeyRecord]:
        """All records (sorted by creation), with last-use times not yet flushed merged in."""
        with self._mem_lock:
            pending = dict(self._pending)
        out = []
        for rec in self._records.values():
            seen = pending.get(rec.name)
            if seen is not None and (rec.last_used_at is None or seen > rec.last_used_at):
                rec = dataclasses.replace(rec, last_used_at=seen)
            out.append(rec)
        return sorted(out, key=lambda r: (r.created_at, r.name))

    def get(self, name: str) -> KeyRecord | None:
        return self._records.get(name)

    def touch(self, record: KeyRecord) -> None:
        """Note a use in memory only; flush() writes it later."""
        now = _now()
        with self._mem_lock:
            self._pending[record.name] = now

    # ---- writing ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, KeyRecord]]:
        """Exclusive flock, then the file's current records to modify in place and write."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records, _ = self._read_file()
            before = dict(records)
            yield records
            if records != before:
                doc = {
                    "version": FILE_VERSION,
                    "keys": [r.to_json() for r in sorted(records.values(), key=lambda r: r.name)],
                }
                write_json_atomic(self.path, doc, mode=FILE_MODE)
            # Stat while still holding the lock: nobody else can have written since.
            try:
                sig: _Sig | None = _sig(os.stat(self.path))
            except FileNotFoundError:
                sig = None
            self._install(records, sig)
        finally:
            os.close(fd)  # closing releases the flock

    def create(
        self, name: str, models: Sequence[str] | None = None, expires: str | None = None
    ) -> tuple[str, KeyRecord]:
        """Make a key. Returns (secret, record); the secret exists nowhere else afterwards."""
        validate_name(name)
        scope = parse_models(models)
        now = _now()
        expires_at = parse_expires(expires, now)
        with self._locked() as records:
            if name in records:
                raise GuardianError(
                    Code.CONFLICT,
                    f"a key named {name!r} already exists; revoke it first or pick another name",
                )
            ids = {r.id for r in records.values()}
            while True:
                secret = KEY_PREFIX + secrets.token_urlsafe(32)
                key_id = secret[len(KEY_PREFIX) : len(KEY_PREFIX) + ID_LEN]
                if key_id not in ids:  # 48-bit ids: a clash is astronomically rare, still checked
                    break
            rec = KeyRecord(
                name=name,
                id=key_id,
                hash=hash_key(secret),
                created_at=now.replace(microsecond=0),
                expires_at=expires_at.replace(microsecond=0) if expires_at else None,
                models=scope,
            )
            records[name] = rec
        return secret, rec

    def revoke(self, name: str) -> bool:
        """Delete a key; False if there was none by that name."""
        with self._locked() as records:
            found = records.pop(name, None) is not None
        with self._mem_lock:
            self._pending.pop(name, None)
        return found

    def flush_due(self) -> bool:
        return bool(self._pending) and time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S

    def flush(self, force: bool = False) -> bool:
        """Write pending last-use times, at most every FLUSH_INTERVAL_S unless `force`.

        Returns True if anything was written. Blocking; use flush_async() on a loop.
        """
        with self._mem_lock:
            if self._flushing or not self._pending or not (force or self.flush_due()):
                return False
            pending, self._pending = self._pending, {}
            self._flushing = True
            # Stamp the start, so requests arriving mid-flush don't queue more flushes.
            self._last_flush = time.monotonic()
        try:
            with self._locked() as records:
                for name, seen in pending.items():
                    rec = records.get(name)  # a key revoked meanwhile stays revoked
                    if rec is not None and (rec.last_used_at is None or seen > rec.last_used_at):
                        records[name] = dataclasses.replace(rec, last_used_at=seen.replace(microsecond=0))
        except BaseException:
            with self._mem_lock:  # put them back so the next flush retries
                for name, seen in pending.items():
                    self._pending.setdefault(name, seen)
            raise
        finally:
            with self._mem_lock:
                self._flushing = False
        return True

    async def flush_async(self, force: bool = False) -> bool:
        return await asyncio.to_thread(self.flush, force)
