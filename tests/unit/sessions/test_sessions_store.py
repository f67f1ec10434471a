"""Session files: names, paths that stay inside their directory, manifests, LRU cap, slot parsing."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace

import pytest

from guardian_supervisor.sessions.slots import parse_metrics, parse_slot, pick_slot
from guardian_supervisor.sessions.store import (
    Manifest,
    SessionStore,
    Target,
    check_name,
    file_mismatch,
    mismatch,
)
from shared.errors import Code, GuardianError


def manifest(name: str = "conv", model: str = "m", used: float = 100.0, **over) -> Manifest:
    base = Manifest(
        name=name,
        kind="named",
        model=model,
        model_path="/models/m.gguf",
        model_size=1000,
        model_mtime_ns=5,
        ctx=2048,
        kv_type="f16",
        flavor="upstream",
        slot=0,
        n_tokens=10,
        bytes=0,
        created=used,
        used=used,
    )
    return replace(base, **over)


TARGET = Target("m", "/models/m.gguf", 1000, 5, 2048, "f16", "upstream", 1)


def put(store: SessionStore, m: Manifest, size: int) -> Manifest:
    """A session as llama-server + commit would leave it: <stem>.partial moved into place."""
    store.model_dir(m.model).mkdir(parents=True, exist_ok=True)
    store.path(m.model, m.stem, ".partial").write_bytes(b"x" * size)
    return store.commit(m)


@pytest.mark.parametrize("name", ["a", "conv-1", "A.b_c", "9" * 64])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".x", "_carry-slot0", "-x", "a/b", "../x", "a b", "a:b", "x" * 65, None, 3, "conv\n", "a\nb"]
)
def test_bad_names(name):
    with pytest.raises(GuardianError) as e:
        check_name(name)
    assert e.value.code is Code.INVALID_PARAMS and "invalid session name" in e.value.message


def test_paths_stay_inside_the_model_dir(tmp_path):
    store = SessionStore(tmp_path)
    assert store.path("m", "conv", ".bin") == tmp_path / "m" / "conv.bin"
    for model, stem in [("..", "x"), ("m", "../x"), ("m", "a/b"), ("a/b", "x"), ("m", ".."), ("", "x")]:
        with pytest.raises(GuardianError):
            store.path(model, stem, ".bin")


def test_manifest_round_trip_and_rejects(tmp_path):
    store = SessionStore(tmp_path)
    m = put(store, manifest(), 7)
    assert m.bytes == 7 and not store.path("m", "conv", ".partial").exists()
    assert store.read("m", "conv") == m
    assert store.find("conv") == m and store.find("other") is None
    assert store.intact(m) is None
    raw = json.loads(store.path("m", "conv", ".json").read_text())
    assert raw["version"] == 1 and raw["kv_type"] == "f16"
    assert Manifest.from_json({**raw, "version": 99}) is None
    assert Manifest.from_json({k: v for k, v in raw.items() if k != "ctx"}) is None
    assert Manifest.from_json({**raw, "ctx": "2048"}) is None
    store.path("m", "conv", ".json").write_text("{broken")
    assert store.read("m", "conv") is None and store.entries() == []


def test_intact_notices_missing_and_resized_files(tmp_path):
    store = SessionStore(tmp_path)
    m = put(store, manifest(), 7)
    with open(store.path("m", "conv", ".bin"), "ab") as f:
        f.write(b"more")
    assert "manifest says 7" in (store.intact(m) or "")
    store.path("m", "conv", ".bin").unlink()
    assert "missing" in (store.intact(m) or "")


def test_mismatch_names_what_differs():
    m = manifest()
    assert mismatch(m, TARGET) is None
    cases = {
        "saved from model 'm', not 'other'": replace(TARGET, model="other"),
        "now points at /models/x.gguf": replace(TARGET, model_path="/models/x.gguf"),
        "changed (size or modification time)": replace(TARGET, model_mtime_ns=6),
        "runs on ik": replace(TARGET, flavor="ik"),
        "context of 2048 tokens per slot; 'm' runs with 4096": replace(TARGET, ctx=4096),
        "KV cache type f16; 'm' runs with q8_0": replace(TARGET, kv_type="q8_0"),
    }
    for text, target in cases.items():
        assert text in (mismatch(m, target) or ""), text
    # Before anything is loaded only the file can be checked.
    assert file_mismatch(m, replace(TARGET, ctx=None)) is None


def test_entries_and_find_across_models(tmp_path):
    store = SessionStore(tmp_path)
    put(store, manifest("b", used=300), 1)
    put(store, manifest("a", model="n", used=200), 1)
    put(store, manifest("_carry-slot0", kind="carry", used=100), 1)
    assert [m.name for m in store.entries()] == ["_carry-slot0", "a", "b"]
    assert [m.name for m in store.entries("m")] == ["_carry-slot0", "b"]
    assert store.find("a").model == "n"
    # A manifest copied into another model's directory is not that model's session.
    os.link(store.path("n", "a", ".json"), store.path("m", "c", ".json"))
    assert "c" not in [m.name for m in store.entries("m")]


def test_cap_removes_least_recently_used_and_orphans_first(tmp_path):
    store = SessionStore(tmp_path)
    for name, used in [("old", 100), ("mid", 200), ("new", 300)]:
        put(store, manifest(name, used=used), 400)
    (tmp_path / "m" / "orphan.bin").write_bytes(b"x" * 100)  # a crash between save and manifest
    assert store.total_bytes("m") > 1300
    assert store.enforce_cap("m", 1250) == ["orphan"]
    assert store.enforce_cap("m", 800) == ["old"]
    store.touch(store.read("m", "mid"), 400)  # used again: now the newest
    assert store.enforce_cap("m", 400) == ["new"]
    assert [m.name for m in store.entries("m")] == ["mid"]
    assert store.enforce_cap("m", 0) == ["mid"] and store.entries() == []


def test_delete_and_touch(tmp_path):
    store = SessionStore(tmp_path)
    m = put(store, manifest(), 3)
    store.touch(m, 999.0)
    assert store.read("m", "conv").used == 999.0
    assert store.delete("m", "conv") is True and store.delete("m", "conv") is False
    store.touch(m)  # gone meanwhile: stays gone
    assert not store.path("m", "conv", ".json").exists()


def test_parse_slot_shapes():
    # Upstream build 11434: a fresh slot, then one that ran a task.
    fresh = parse_slot({"id": 0, "n_ctx": 1024, "speculative": False, "is_processing": False})
    assert (fresh.n_tokens, fresh.processing, fresh.id_task) == (None, False, None)
    used = parse_slot({"id": 1, "is_processing": False, "id_task": 7, "n_prompt_tokens": 88})
    assert (used.id, used.n_tokens, used.id_task) == (1, 88, 7)
    # Older / ik shapes: n_past, state, token lists.
    ik = parse_slot({"id": 2, "state": 1, "n_past": 40, "id_task": -1})
    assert (ik.n_tokens, ik.processing, ik.id_task) == (40, True, None)
    assert parse_slot({"id": 3, "cache_tokens": [1, 2, 3]}).n_tokens == 3


def test_pick_slot_prefers_the_latest_task():
    slots = [
        parse_slot({"id": 0, "id_task": 3, "n_prompt_tokens": 10}),
        parse_slot({"id": 1, "id_task": 9, "n_prompt_tokens": 20}),
        parse_slot({"id": 2, "id_task": 12, "n_prompt_tokens": 0}),  # erased: nothing to save
    ]
    assert pick_slot(slots).id == 1
    assert pick_slot([slots[2]]) is None


def test_parse_metrics():
    text = "# HELP x\nllamacpp:prompt_tokens_cached_total 436\nllamacpp:requests_processing 0\nbad line\n"
    assert parse_metrics(text) == {
        "llamacpp:prompt_tokens_cached_total": 436.0,
        "llamacpp:requests_processing": 0.0,
    }


def test_manifest_public_view():
    pub = manifest(used=0.0).public()
    assert pub["used_at"] == "1970-01-01T00:00:00+00:00"
    assert set(pub) == {
        "name",
        "kind",
        "model",
        "slot",
        "n_tokens",
        "bytes",
        "ctx",
        "kv_type",
        "created_at",
        "owner",
        "used_at",
    }
    assert asdict(manifest())["version"] == 1


def test_foreign_files_are_left_alone(tmp_path):
    store = SessionStore(tmp_path)
    put(store, manifest(), 10)
    (tmp_path / "m" / "notes about x.bin").write_bytes(b"x" * 50)
    (tmp_path / "m" / ".hidden.json").write_text("{}")
    assert [m.name for m in store.entries()] == ["conv"]
    assert store.enforce_cap("m", 0) == ["conv"]
    assert (tmp_path / "m" / "notes about x.bin").exists()


def test_symlinks_are_not_followed_by_the_size_cap(tmp_path):
    """A link planted in data/slots must not make the cap delete files elsewhere (item 13)."""
    import stat

    store = SessionStore(tmp_path / "slots")
    old = put(store, manifest("old", used=1.0), 100)
    put(store, manifest("new", used=2.0), 100)
    assert stat.S_IMODE(store.path("m", "old", ".json").stat().st_mode) == 0o600
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"y" * 500)
    (store.model_dir("m") / "link.bin").symlink_to(outside)
    assert store.enforce_cap("m", 150) == [old.stem]
    assert outside.read_bytes() == b"y" * 500 and (store.model_dir("m") / "link.bin").is_symlink()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.bin").write_bytes(b"z" * 500)
    (tmp_path / "slots" / "m2").symlink_to(tmp_path / "other")
    with pytest.raises(GuardianError) as e:
        store.enforce_cap("m2", 0)
    assert "symbolic link" in e.value.message
    assert (tmp_path / "other" / "x.bin").exists()


def test_ik_token_lists_move_go_and_count_with_their_slot_file(tmp_path):
    store = SessionStore(tmp_path)
    d = store.model_dir("m")
    d.mkdir(parents=True)
    # ik writes `<file>.tokens.json` beside the slot file it saves (and reads it back on restore).
    store.path("m", "ik", ".partial").write_bytes(b"x" * 400)
    (d / "ik.partial.tokens.json").write_text("[1, 2, 3]")
    m = store.commit(manifest("ik", used=100))
    assert (d / "ik.bin.tokens.json").read_text() == "[1, 2, 3]"
    assert not (d / "ik.partial.tokens.json").exists() and m.bytes == 400
    assert [e.name for e in store.entries("m")] == ["ik"]  # the token list is no manifest
    # An upstream save over it leaves no stale token list beside the new slot file.
    put(store, manifest("ik", used=100), 400)
    assert not (d / "ik.bin.tokens.json").exists()
    (d / "ik.bin.tokens.json").write_text("[1]" * 100)
    (d / "orphan.bin.tokens.json").write_text("[1]" * 100)  # its slot file went in a crash
    assert store.enforce_cap("m", 10_000) == []
    assert store.enforce_cap("m", 700) == ["orphan"]  # counted (1000 in all), orphans first
    assert store.enforce_cap("m", 400) == ["ik"]  # 400 + 300: the token list counts
    assert list(d.iterdir()) == []
    store.path("m", "p", ".partial").write_bytes(b"x")
    (d / "p.partial.tokens.json").write_text("[]")
    store.discard_partial("m", "p")
    assert list(d.iterdir()) == []
