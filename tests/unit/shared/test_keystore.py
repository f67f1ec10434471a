"""KeyStore: creation, hash-only storage, verification, expiry, scope, cross-process safety."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared import keystore as ks
from shared.errors import Code, GuardianError
from shared.keystore import KEY_PREFIX, KeyStore, parse_expires

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "api_keys.json"


def test_create_returns_prefixed_high_entropy_key(path: Path) -> None:
    store = KeyStore(path)
    secret, rec = store.create("alice")
    assert secret.startswith(KEY_PREFIX)
    # token_urlsafe(32) -> 43 chars of base64url: 256 bits.
    assert len(secret) >= len(KEY_PREFIX) + 43
    assert rec.name == "alice"
    assert rec.id == secret[len(KEY_PREFIX) : len(KEY_PREFIX) + 8]
    assert rec.models is None and rec.expires_at is None and rec.last_used_at is None
    assert store.create("bob")[0] != secret


def test_file_is_0600_and_holds_only_the_hash(path: Path) -> None:
    store = KeyStore(path)
    secret, rec = store.create("alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert secret not in raw
    # Not even the secret part after the id may leak.
    assert secret[len(KEY_PREFIX) + 8 :] not in raw
    doc = json.loads(raw)
    (entry,) = doc["keys"]
    assert entry["hash"].startswith("sha256:") and entry["hash"] == rec.hash
    assert set(entry) == {"name", "id", "hash", "created_at", "expires_at", "last_used_at", "models"}


def test_list_and_repr_never_show_secret_or_hash(path: Path) -> None:
    store = KeyStore(path)
    secret, rec = store.create("alice", models=["llama3"])
    listed = store.list()
    assert [r.name for r in listed] == ["alice"]
    for shown in (repr(listed[0]), str(listed[0]), json.dumps(listed[0].to_public())):
        assert secret not in shown
        assert rec.hash not in shown
        assert rec.hash.removeprefix("sha256:") not in shown
    assert listed[0].to_public()["models"] == ["llama3"]


def test_verify_accepts_right_key_and_rejects_others(path: Path) -> None:
    store = KeyStore(path)
    secret, rec = store.create("alice")
    assert store.verify(secret) == rec
    assert store.check(secret) == (rec, "ok")
    # Same id, wrong rest: found by id, rejected by hash.
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert store.check(tampered) == (None, "unknown")
    assert store.check(KEY_PREFIX + "x" * 43) == (None, "unknown")
    assert store.check("sk-" + secret) == (None, "malformed")
    assert store.check("") == (None, "malformed")
    assert store.check(secret + "é") == (None, "malformed")
    assert store.check(KEY_PREFIX + "a" * 5000) == (None, "malformed")


def test_revoke(path: Path) -> None:
    store = KeyStore(path)
    secret, _ = store.create("alice")
    keep, _ = store.create("bob")
    assert store.revoke("alice") is True
    assert store.revoke("alice") is False
    assert store.verify(secret) is None
    assert store.verify(keep) is not None
    assert [r.name for r in KeyStore(path).list()] == ["bob"]
    # The name is free again after revocation.
    store.create("alice")


def test_duplicate_name_is_a_conflict(path: Path) -> None:
    store = KeyStore(path)
    store.create("alice")
    with pytest.raises(GuardianError) as ei:
        store.create("alice")
    assert ei.value.code is Code.CONFLICT


@pytest.mark.parametrize("name", ["a", "A-b_c.9", "x" * 64])
def test_valid_names(path: Path, name: str) -> None:
    KeyStore(path).create(name)


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "slash/y", "ümlaut", "new\n", "semi;colon"])
def test_invalid_names(path: Path, name: str) -> None:
    with pytest.raises(GuardianError) as ei:
        KeyStore(path).create(name)
    assert ei.value.code is Code.INVALID_PARAMS
    assert not path.exists()


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_parse_expires_durations(text: str, delta: timedelta) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_expires(text, now) == now + delta


def test_parse_expires_dates() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_expires("2030-02-01", now) == datetime(2030, 2, 1, tzinfo=UTC)
    assert parse_expires("2030-02-01T10:30:00", now) == datetime(2030, 2, 1, 10, 30, tzinfo=UTC)
    assert parse_expires("2030-02-01T10:30:00+02:00", now) == datetime(2030, 2, 1, 8, 30, tzinfo=UTC)
    assert parse_expires(None, now) is None
    assert parse_expires("never", now) is None


@pytest.mark.parametrize("text", ["0d", "5y", "soon", "2029-12-31", "-3d", "30"])
def test_parse_expires_rejects(text: str) -> None:
    with pytest.raises(GuardianError) as ei:
        parse_expires(text, datetime(2030, 1, 1, tzinfo=UTC))
    assert ei.value.code is Code.INVALID_PARAMS


def test_expired_key_is_rejected(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(path)
    secret, rec = store.create("temp", expires="90m")
    assert rec.expires_at is not None
    assert store.verify(secret) == rec
    later = rec.expires_at + timedelta(seconds=1)
    monkeypatch.setattr(ks, "_now", lambda: later)
    assert store.check(secret) == (None, "expired")
    assert store.verify(secret) is None
    # An expired key still counts as existing: auth must not silently switch off.
    assert store.any_keys()
    assert store.list()[0].to_public()["expired"] is True


def test_scope(path: Path) -> None:
    store = KeyStore(path)
    _, scoped = store.create("scoped", models=["llama3", "qwen2.5:7b", "mistral:latest"])
    _, everything = store.create("all")
    for model in ("llama3", "llama3:latest", "qwen2.5:7b", "mistral", "mistral:latest"):
        assert store.allows(scoped, model), model
    for model in ("qwen2.5", "qwen2.5:14b", "llama3:8b", "phi3", ""):
        assert not store.allows(scoped, model), model
    assert store.allows(everything, "anything:at-all")


def test_scope_parsing(path: Path) -> None:
    store = KeyStore(path)
    _, rec = store.create("a", models=[" llama3 ", "qwen", "llama3", ""])
    assert rec.models == ("llama3", "qwen")
    with pytest.raises(GuardianError):
        store.create("b", models=[])
    with pytest.raises(GuardianError):
        store.create("c", models=[" ", ""])
    with pytest.raises(GuardianError):
        store.create("d", models=["a,b"])
    with pytest.raises(GuardianError):
        store.create("e", models=["two words"])
    _, rec = store.create("f", models="llama3, qwen")  # the CLI's comma form
    assert rec.models == ("llama3", "qwen")


def test_any_keys(path: Path) -> None:
    store = KeyStore(path)
    assert not store.any_keys()
    store.create("alice")
    assert store.any_keys()
    store.revoke("alice")
    assert not store.any_keys()


def test_touch_is_in_memory_until_flush(path: Path) -> None:
    store = KeyStore(path)
    _, rec = store.create("alice")
    mtime = path.stat().st_mtime_ns
    for _ in range(100):
        store.touch(rec)
    assert path.stat().st_mtime_ns == mtime, "touch must not write"
    assert store.list()[0].last_used_at is not None
    assert store.flush() is False, "not due yet"
    assert store.flush(force=True) is True
    on_disk = json.loads(path.read_text())["keys"][0]["last_used_at"]
    assert on_disk is not None
    assert KeyStore(path).list()[0].last_used_at is not None
    assert store.flush(force=True) is False, "nothing pending"


def test_flush_does_not_resurrect_a_key_revoked_elsewhere(path: Path) -> None:
    proxy = KeyStore(path)
    secret, rec = proxy.create("alice")
    proxy.touch(rec)
    KeyStore(path).revoke("alice")  # another process, proxy has not reloaded yet
    proxy.flush(force=True)
    assert proxy.verify(secret) is None
    assert KeyStore(path).list() == []


def test_flush_is_rate_limited(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(path)
    _, rec = store.create("alice")
    store.touch(rec)
    assert not store.flush_due()
    monkeypatch.setattr(ks, "FLUSH_INTERVAL_S", 0.0)
    assert store.flush_due()
    assert store.flush() is True


def test_revocation_seen_by_second_instance(path: Path) -> None:
    proxy = KeyStore(path)
    cli = KeyStore(path)
    secret, _ = cli.create("alice")
    assert proxy.verify(secret) is None  # not loaded yet
    assert proxy.refresh_if_changed(force=True) is True
    assert proxy.verify(secret) is not None
    assert proxy.refresh_if_changed(force=True) is False, "unchanged file: no reload"
    cli.revoke("alice")
    assert proxy.refresh_if_changed(force=True) is True
    assert proxy.verify(secret) is None


async def test_revocation_seen_within_a_second_via_maybe_refresh(path: Path) -> None:
    proxy = KeyStore(path)
    cli = KeyStore(path)
    secret, _ = cli.create("alice")
    await asyncio.sleep(ks.REFRESH_INTERVAL_S)
    await proxy.maybe_refresh()
    assert proxy.verify(secret) is not None

    cli.revoke("alice")
    start = time.monotonic()
    while proxy.verify(secret) is not None:
        assert time.monotonic() - start < 1.0, "revocation not seen within 1 s"
        await asyncio.sleep(0.02)
        await proxy.maybe_refresh()
    elapsed = time.monotonic() - start
    assert elapsed < 1.0


async def test_maybe_refresh_is_rate_limited(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(path)
    calls = 0
    real = store.refresh_if_changed

    def counting(force: bool = False) -> bool:
        nonlocal calls
        calls += 1
        return real(force)

    monkeypatch.setattr(store, "refresh_if_changed", counting)
    await asyncio.sleep(ks.REFRESH_INTERVAL_S)
    await asyncio.gather(*(store.maybe_refresh() for _ in range(50)))
    for _ in range(50):
        await store.maybe_refresh()
    assert calls == 1


def test_corrupt_file_refuses_to_load_and_to_overwrite(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(GuardianError) as ei:
        KeyStore(path)
    assert ei.value.code is Code.CONFIG_INVALID


def test_corrupt_file_on_refresh_keeps_last_good_keys(path: Path) -> None:
    store = KeyStore(path)
    secret, _ = store.create("alice")
    path.write_text("garbage")
    assert store.refresh_if_changed(force=True) is False
    assert store.verify(secret) is not None
    with pytest.raises(GuardianError):
        store.create("bob")  # must not overwrite a file it cannot read
    assert path.read_text() == "garbage"


_WORKER = """
import sys
from shared.keystore import KeyStore
store = KeyStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.create(f"{sys.argv[2]}-{i}")
"""


def test_concurrent_writers_lose_nothing(path: Path) -> None:
    """Several processes creating keys at once: the flock serializes read-modify-write."""
    procs, per = 6, 8
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(path), f"w{n}", str(per)], env=env)
        for n in range(procs)
    ]
    for w in workers:
        assert w.wait(timeout=30) == 0
    names = {r.name for r in KeyStore(path).list()}
    assert names == {f"w{n}-{i}" for n in range(procs) for i in range(per)}


def test_keys_seen_survives_revoke_delete_and_restart(path: Path) -> None:
    """Once a key existed, an empty or missing store still counts as 'keys seen' (fail closed)."""
    store = KeyStore(path)
    assert not store.keys_seen()
    store.create("only")
    store.revoke("only")
    assert not store.any_keys() and store.keys_seen()
    path.unlink()
    fresh = KeyStore(path)  # a later run: the marker file remembers
    assert not fresh.any_keys() and fresh.keys_seen()
    assert stat.S_IMODE(store.seen_path.stat().st_mode) == 0o600
