"""Sessions end to end: real llama-server, tiny models, guardianctl and the proxy's HTTP routes.

A conversation is "the same" when the follow-up sends the same messages plus a new turn;
llama-server then reports in `timings.cache_n` how many prompt tokens it found in its cache.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

ONE = {"max_loaded_models": 1}  # one model at a time: asking for B swaps A out
# About 1100 prompt tokens: the tiny vocabulary spells most characters as byte tokens.
LONG = " ".join(f"the world is a hello of {i}." for i in range(40))


def models(model_dir, ctx_a: int = 2048) -> dict:
    return {
        "demo-a": {"path": str(model_dir / "demo-a.gguf"), "context": ctx_a},
        "demo-b": {"path": str(model_dir / "demo-b.gguf"), "context": 1024},
    }


def chat(g, model: str, messages: list[dict], headers: dict | None = None) -> dict:
    r = httpx.post(
        g.url + "/v1/chat/completions",
        json={"model": model, "messages": messages, "max_tokens": 4, "temperature": 0},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def follow_up(first: dict) -> list[dict]:
    """The first turn, the model's answer, and a new question: the same conversation, longer."""
    return [
        {"role": "user", "content": LONG},
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "and then?"},
    ]


def ctl_json(g, *args: str) -> dict | list:
    r = g.ctl(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def state(g, model: str) -> str:
    return g.model(model)["state"]


def wait_log(g, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = g.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{g.log()[-3000:]}")


@pytest.mark.parametrize("carry_over", [True, False])
def test_a_b_a_follow_up_reuses_the_cache(guardian_factory, model_dir, carry_over):
    g = guardian_factory(models(model_dir), {**ONE, "sessions": {"carry_over": carry_over}})
    first = chat(g, "demo-a", [{"role": "user", "content": LONG}])
    n_prompt = first["usage"]["prompt_tokens"]
    assert n_prompt > 800
    chat(g, "demo-b", [{"role": "user", "content": "hi"}])
    assert state(g, "demo-a") == "STOPPED", "asking for B swapped A out"
    carry = g.root / "data" / "slots" / "demo-a" / "_carry-slot0.bin"
    assert carry.exists() == carry_over

    second = chat(g, "demo-a", follow_up(first))
    cache_n = second["timings"]["cache_n"]
    if carry_over:
        # Everything up to the first answer came back from the restored slot.
        assert cache_n >= n_prompt - 1, second["timings"]
        log = wait_log(g, "session_cache_reused")
        assert "session_carried" in log and "session_restored" in log
        assert "session_cache_not_used" not in log
    else:
        assert cache_n == 0, second["timings"]
        assert "session_restored" not in g.log()


def test_save_and_restore_by_name(guardian_factory, model_dir):
    g = guardian_factory(models(model_dir), {**ONE, "sessions": {"carry_over": False}})
    r = g.ctl("session", "save", "conv1", "--model", "demo-a")
    assert r.returncode == 8 and "not loaded" in r.stderr, r.stderr  # CONFLICT: nothing to save yet

    first = chat(g, "demo-a", [{"role": "user", "content": LONG}])
    saved = ctl_json(g, "session", "save", "conv1", "--model", "demo-a")
    assert saved["name"] == "conv1" and saved["model"] == "demo-a" and saved["slot"] == 0
    assert saved["n_tokens"] >= first["usage"]["prompt_tokens"] and saved["ctx"] == 2048
    manifest = json.loads((g.root / "data" / "slots" / "demo-a" / "conv1.json").read_text())
    assert manifest["kv_type"] == "f16" and manifest["model_path"].endswith("demo-a.gguf")
    assert manifest["bytes"] == (g.root / "data" / "slots" / "demo-a" / "conv1.bin").stat().st_size
    listing = ctl_json(g, "session", "list")
    assert [s["name"] for s in listing] == ["conv1"]
    assert "conv1" in g.ctl("session", "list").stdout

    chat(g, "demo-b", [{"role": "user", "content": "hi"}])  # A leaves, its cache with it
    assert state(g, "demo-a") == "STOPPED"
    restored = ctl_json(g, "session", "restore", "conv1")
    # A fresh server lists no token count for a slot that has not run a task yet: "unknown".
    assert restored["loaded_model"] is True and restored["check"] in ("verified", "unknown")
    assert restored["n_restored"] == saved["n_tokens"] and state(g, "demo-a") == "READY"
    second = chat(g, "demo-a", follow_up(first))
    assert second["timings"]["cache_n"] >= first["usage"]["prompt_tokens"] - 1, second["timings"]

    assert ctl_json(g, "session", "delete", "conv1") == {"deleted": "conv1", "model": "demo-a"}
    assert ctl_json(g, "session", "list") == []
    r = g.ctl("session", "restore", "conv1")
    assert r.returncode == 3 and "no session named 'conv1'" in r.stderr
    r = g.ctl("session", "save", "../etc/x", "--model", "demo-a")
    assert r.returncode == 2 and "invalid session name" in r.stderr
    assert not list((g.root / "data" / "slots").glob("*.partial"))


def test_http_routes_with_a_key(guardian_factory, model_dir):
    g = guardian_factory(models(model_dir), {"sessions": {"carry_over": False}})
    key = g.ctl("keys", "create", "alice").stdout.strip()
    scoped = g.ctl("keys", "create", "bob", "--models", "demo-b").stdout.strip()
    auth = {"Authorization": f"Bearer {key}"}
    base = g.url + "/guardian/sessions"
    assert httpx.get(base).status_code == 401

    r = httpx.post(base, json={"name": "web", "model": "demo-a"}, headers=auth)
    assert r.status_code == 409 and "not loaded" in r.json()["error"]
    first = chat(g, "demo-a", [{"role": "user", "content": LONG}], headers=auth)
    r = httpx.post(base, json={"name": "web", "model": "demo-a"}, headers=auth, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["n_tokens"] >= first["usage"]["prompt_tokens"]

    assert [s["name"] for s in httpx.get(base, headers=auth).json()["sessions"]] == ["web"]
    assert httpx.get(base + "/web", headers=auth).json()["model"] == "demo-a"
    bob = {"X-Api-Key": scoped}
    assert httpx.get(base, headers=bob).json() == {"sessions": []}, "bob's key may not see demo-a"
    r = httpx.post(base + "/web/restore", headers=bob)
    assert r.status_code == 404 and "no session named 'web'" in r.json()["error"]

    # Sessions belong to the key that saved them: carol has alice's scope, still sees nothing.
    carol = {"X-Api-Key": g.ctl("keys", "create", "carol").stdout.strip()}
    assert httpx.get(base, headers=carol).json() == {"sessions": []}
    assert httpx.get(base + "/web", headers=carol).status_code == 404
    assert httpx.delete(base + "/web", headers=carol).status_code == 404
    r = httpx.post(base, json={"name": "web", "model": "demo-a"}, headers=carol, timeout=30)
    assert r.status_code == 409 and "belongs to another key" in r.json()["error"]
    assert [s["name"] for s in ctl_json(g, "session", "list")] == ["web"]  # the admin sees all

    r = httpx.post(base + "/web/restore", headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["n_restored"] > 0, r.text
    r = httpx.post(base + "/web/restore", json={"model": "demo-b"}, headers=auth)
    assert r.status_code == 409 and "cannot be restored into 'demo-b'" in r.json()["error"]

    r = httpx.post(base, content=b"{nope", headers=auth)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(base, json={"name": "a/b", "model": "demo-a"}, headers=auth)
    assert r.status_code == 400 and "invalid session name" in r.json()["error"]
    r = httpx.post(base, json={"name": "x", "model": "nope"}, headers=auth)
    assert r.status_code == 404 and "not found" in r.json()["error"]
    assert httpx.get(base + "/missing", headers=auth).status_code == 404

    r = httpx.delete(base + "/web", headers=auth)
    assert r.status_code == 200 and r.json() == {"deleted": "web", "model": "demo-a"}
    assert httpx.delete(base + "/web", headers=auth).status_code == 404


def test_restore_into_a_different_model_is_refused(guardian_factory, model_dir):
    g = guardian_factory(models(model_dir), ONE)
    chat(g, "demo-a", [{"role": "user", "content": LONG}])
    ctl_json(g, "session", "save", "mine", "--model", "demo-a")
    r = g.ctl("session", "restore", "mine", "--model", "demo-b")
    assert r.returncode == 8 and "saved from model 'demo-a'" in r.stderr, r.stderr

    # demo-a now names another GGUF file: neither the named session nor the carried slot fits.
    g.ctl("unload", "demo-a")
    assert (g.root / "data" / "slots" / "demo-a" / "_carry-slot0.bin").exists()
    changed = models(model_dir)
    changed["demo-a"]["path"] = str(model_dir / "tiny-c.gguf")
    g.write_config(changed)
    assert g.ctl("reload").returncode == 0
    r = g.ctl("session", "restore", "mine")
    assert r.returncode == 8 and "now points at" in r.stderr, r.stderr
    assert state(g, "demo-a") == "STOPPED", "a refused restore loads nothing"
    out = chat(g, "demo-a", [{"role": "user", "content": LONG}])
    assert out["timings"]["cache_n"] == 0
    log = wait_log(g, "session_skipped")
    assert "now points at" in log and "session_restored" not in log


def test_context_change_skips_the_carried_slot(guardian_factory, model_dir):
    g = guardian_factory(models(model_dir), ONE)
    chat(g, "demo-a", [{"role": "user", "content": LONG}])
    g.ctl("unload", "demo-a")
    g.write_config(models(model_dir, ctx_a=3072))
    assert g.ctl("reload").returncode == 0
    out = chat(g, "demo-a", [{"role": "user", "content": LONG}])
    assert out["timings"]["cache_n"] == 0
    log = wait_log(g, "session_skipped")
    assert "context of 2048 tokens per slot" in log


def test_corrupted_slot_file_is_skipped(guardian_factory, model_dir):
    g = guardian_factory(models(model_dir), ONE)
    first = chat(g, "demo-a", [{"role": "user", "content": LONG}])
    chat(g, "demo-b", [{"role": "user", "content": "hi"}])
    carry = g.root / "data" / "slots" / "demo-a" / "_carry-slot0.bin"
    data = bytearray(carry.read_bytes())
    data[:64] = b"\xff" * 64  # same size, so only llama-server can tell it is damaged
    carry.write_bytes(bytes(data))

    second = chat(g, "demo-a", follow_up(first))
    assert second["choices"][0]["finish_reason"] in ("stop", "length")
    assert second["timings"]["cache_n"] == 0
    log = wait_log(g, "session_restore_failed")
    assert "session_restored" not in log
    assert not carry.exists(), "a damaged carry-over file is removed"


def test_size_cap_removes_least_recently_used(guardian_factory, model_dir):
    g = guardian_factory(models(model_dir), {"sessions": {"carry_over": False, "max_mb_per_model": 1}})
    # demo-a's f16 KV cache is about 1 KiB per token: ~420 tokens make a ~0.42 MiB file.
    chat(g, "demo-a", [{"role": "user", "content": LONG[:280]}])
    sizes = [
        ctl_json(g, "session", "save", name, "--model", "demo-a")["bytes"] for name in ("s1", "s2", "s3")
    ]
    assert 2 * sizes[0] <= 2**20 < 3 * sizes[0], sizes
    names = [s["name"] for s in ctl_json(g, "session", "list")]
    assert names == ["s2", "s3"], names
    total = sum(p.stat().st_size for p in (g.root / "data" / "slots" / "demo-a").glob("*.bin"))
    assert total <= 2**20

    chat(g, "demo-a", [{"role": "user", "content": LONG}])  # ~1100 tokens: over the cap alone
    r = g.ctl("session", "save", "big", "--model", "demo-a")
    assert r.returncode == 5 and "more than sessions.max_mb_per_model" in r.stderr, r.stderr
    assert [s["name"] for s in ctl_json(g, "session", "list")] == [], "the cap made room first"
