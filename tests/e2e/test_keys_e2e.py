"""API keys through the real stack: guardianctl creates, the proxy enforces, revoke is live."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.timeout(120)


def test_keys_create_enforce_scope_revoke(guardian_factory):
    g = guardian_factory()
    # Before any key exists, the API is open (Ollama has no auth; don't break first runs).
    assert httpx.get(g.url + "/v1/models").status_code == 200
    r = g.ctl("keys", "create", "alice")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("flip_") and "will not be shown again" in r.stderr
    scoped = g.ctl("keys", "create", "bob", "--models", "demo-b", "--expires", "30d").stdout.strip()
    keys_file = g.root / "data" / "api_keys.json"
    assert stat.S_IMODE(os.stat(keys_file).st_mode) == 0o600
    assert key not in keys_file.read_text() and scoped not in keys_file.read_text()

    # Within a second every API route needs a key; / and /api/version stay open for detection.
    deadline = time.monotonic() + 1.0
    while httpx.get(g.url + "/v1/models").status_code != 401:
        assert time.monotonic() < deadline, "the new key did not turn authentication on within 1 s"
        time.sleep(0.05)
    assert httpx.get(g.url + "/").status_code == 200
    r = httpx.post(
        g.url + "/v1/chat/completions",
        json={"model": "demo-a", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(g.url + "/v1/models", headers={"Authorization": "Bearer flip_wrong"})
    assert r.status_code == 401

    client = openai.OpenAI(base_url=g.url + "/v1", api_key=key, max_retries=0)
    out = client.chat.completions.create(
        model="demo-a", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert out.model == "demo-a"
    r = httpx.get(g.url + "/v1/models", headers={"X-Api-Key": key})
    assert r.status_code == 200 and len(r.json()["data"]) == 2

    bob = openai.OpenAI(base_url=g.url + "/v1", api_key=scoped, max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:  # out of scope looks like absent
        bob.chat.completions.create(
            model="demo-a", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert "model 'demo-a' not found" in str(exc.value)
    assert [m.id for m in bob.models.list()] == ["demo-b"]

    listing = json.loads(g.ctl("keys", "list", "--json").stdout)
    assert {k["name"] for k in listing} == {"alice", "bob"}
    assert all("hash" not in k and "key" not in k for k in listing)
    assert g.ctl("keys", "revoke", "alice").returncode == 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if httpx.get(g.url + "/v1/models", headers={"X-Api-Key": key}).status_code == 401:
            break
        time.sleep(0.05)
    else:
        pytest.fail("a revoked key was still accepted after 1 s")


def test_python_m_auth_creates_a_key(guardian_factory):
    g = guardian_factory()
    data = g.root / "data"
    r = subprocess.run(
        [sys.executable, "-m", "guardian_proxy.auth", "carol", "--data-dir", str(data)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("flip_")
    deadline = time.monotonic() + 2
    while httpx.get(g.url + "/v1/models").status_code != 401:  # the proxy noticed keys exist
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(g.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_dashboard_shows_models(guardian_factory):
    g = guardian_factory()
    ui = f"http://127.0.0.1:{g.settings['proxy']['ui_port']}"
    r = httpx.get(ui + "/")
    assert r.status_code == 200 and "demo-a" in r.text and "demo-b" in r.text
    st = httpx.get(ui + "/status.json").json()
    assert {m["name"] for m in st["models"]} == {"demo-a", "demo-b"}
