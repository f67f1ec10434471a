"""Audit findings against the real Guardian and a real llama-server (issue 13)."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable

import httpx
import psutil

from tests.harness import Guardian


def test_llama_server_port_needs_guardians_key(guardian_factory: Callable[..., Guardian]) -> None:
    """The child's port refuses keyless calls; the key is in a 0600 file, never on argv;
    the proxy (and the supervisor's own calls) still get through; the file goes at exit."""
    g = guardian_factory(env={"LLAMA_ARG_API_KEY": "", "LLAMA_API_KEY": "foreign"})
    body = {"model": "demo-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(g.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    m = g.model("demo-a")
    direct = f"http://127.0.0.1:{m['port']}"
    assert httpx.post(direct + "/v1/chat/completions", json=body, timeout=30).status_code == 401
    foreign = {"Authorization": "Bearer foreign"}  # LLAMA_API_KEY is not passed on
    assert (
        httpx.post(direct + "/v1/chat/completions", json=body, headers=foreign, timeout=30).status_code == 401
    )
    assert httpx.get(direct + "/slots", timeout=30).status_code == 401
    key_headers = g.child_headers("demo-a")
    assert (
        httpx.post(direct + "/v1/chat/completions", json=body, headers=key_headers, timeout=30).status_code
        == 200
    )

    key = key_headers["Authorization"].removeprefix("Bearer ")
    pid = m["pid"]
    cmdline = " ".join(psutil.Process(pid).cmdline())
    assert key not in cmdline and "--api-key-file" in cmdline
    env = psutil.Process(pid).environ()
    assert not any(k.startswith("LLAMA_ARG_") for k in env) and "LLAMA_API_KEY" not in env
    (key_file,) = (g.root / "data" / "run" / "keys").glob("demo-a-*.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700

    # A session save goes through the supervisor's slot calls, which must carry the key.
    g.rpc("models.unload", {"model": "demo-a"})
    deadline = time.monotonic() + 20
    while key_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not key_file.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_auth_stays_on_after_the_last_key_goes(guardian_factory: Callable[..., Guardian]) -> None:
    """Fail-open: revoking the last key, or deleting the key file, must not open the door."""
    g = guardian_factory()
    secret = g.ctl("keys", "create", "alice").stdout.strip().splitlines()[-1].split()[-1]
    assert secret.startswith("flip_")
    auth = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(g.url + "/api/tags", headers=auth, timeout=30).status_code == 200
    assert httpx.get(g.url + "/api/tags", timeout=30).status_code == 401
    assert g.ctl("keys", "revoke", "alice").returncode == 0
    time.sleep(0.4)  # the proxy re-reads the key file at most every 0.25 s
    for headers in (auth, {}):
        r = httpx.get(g.url + "/api/tags", headers=headers, timeout=30)
        assert r.status_code == 401, r.text
        assert "guardianctl keys create" in r.text and "auth.required: false" in r.text
    (g.root / "data" / "api_keys.json").unlink()
    time.sleep(0.4)
    assert httpx.get(g.url + "/v1/models", timeout=30).status_code == 401


def test_huge_keep_alive_does_not_break_ps(guardian_factory: Callable[..., Guardian]) -> None:
    g = guardian_factory()
    body = {
        "model": "demo-a",
        "prompt": "hi",
        "stream": False,
        "keep_alive": 1e19,
        "options": {"num_predict": 1},
    }
    assert httpx.post(g.url + "/api/generate", json=body, timeout=60).status_code == 200
    r = httpx.get(g.url + "/api/ps", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["models"][0]["name"].startswith("demo-a")


def test_request_body_limits(guardian_factory: Callable[..., Guardian]) -> None:
    """Compressed bodies 415, deep nesting 400 in each API's shape, message count capped."""
    import gzip

    g = guardian_factory(settings={"proxy": {"max_messages": 50}})
    small = b'{"model": "demo-a", "messages": [{"role": "user", "content": "hi"}]}'
    for path in ("/api/chat", "/v1/chat/completions"):
        r = httpx.post(
            g.url + path,
            content=gzip.compress(small),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 415 and "uncompressed" in r.text, r.text
    deep = b'{"model": "demo-a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(g.url + "/api/chat", content=deep, timeout=30)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
    r = httpx.post(g.url + "/v1/chat/completions", content=deep, timeout=30)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    r = httpx.post(g.url + "/guardian/sessions", content=deep, timeout=30)
    assert r.status_code == 400, r.text
    many = [{"role": "user", "content": "x"}] * 51
    r = httpx.post(g.url + "/api/chat", json={"model": "demo-a", "messages": many}, timeout=30)
    assert r.status_code == 400 and "proxy.max_messages" in r.json()["error"]
    r = httpx.post(g.url + "/v1/chat/completions", json={"model": "demo-a", "messages": many}, timeout=30)
    assert r.status_code == 400 and "too many messages: 51" in r.json()["error"]["message"]


def test_host_header_allow_list(guardian_factory: Callable[..., Guardian]) -> None:
    """DNS rebinding: a foreign Host is refused on the API and the dashboard; local names,
    IPs and proxy.allowed_hosts pass."""
    g = guardian_factory(settings={"proxy": {"allowed_hosts": ["guardian.example"]}})
    ui = f"http://127.0.0.1:{g.settings['proxy']['ui_port']}"
    for base, path in ((g.url, "/api/tags"), (ui, "/status.json")):
        r = httpx.get(base + path, headers={"Host": "evil.example"}, timeout=30)
        assert r.status_code == 403 and "proxy.allowed_hosts" in r.text, r.text
        for host in ("localhost:11434", "127.0.0.1", "[::1]:80", "guardian.example", "box.local"):
            assert httpx.get(base + path, headers={"Host": host}, timeout=30).status_code == 200, host


def test_answers_do_not_reveal_server_paths(guardian_factory: Callable[..., Guardian]) -> None:
    g = guardian_factory()
    r = httpx.post(g.url + "/api/create", json={"model": "mine", "from": "demo-a"}, timeout=30)
    assert r.status_code == 400 and "models.yaml" in r.text, r.text
    assert str(g.root) not in r.text


def test_rpc_socket_comes_back_and_status_socket_is_read_only(
    guardian_factory: Callable[..., Guardian],
) -> None:
    import grp
    import os

    import pytest

    from shared.errors import GuardianError
    from shared.rpc import call_sync

    group = grp.getgrgid(os.getgid()).gr_name
    g = guardian_factory(settings={"supervisor": {"status_group": group}})
    ro = g.socket.with_name("supervisor-status.sock")
    assert stat.S_IMODE(ro.stat().st_mode) == 0o660 and ro.stat().st_gid == os.getgid()
    assert call_sync(ro, "models.status", {}, 10)["models"]
    with pytest.raises(GuardianError) as e:
        call_sync(ro, "models.load", {"model": "demo-a"}, 10)
    assert "read-only status socket" in e.value.message

    g.socket.unlink()  # guardianctl would be locked out until a restart
    deadline = time.monotonic() + 10
    while not g.socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert g.rpc("models.status")["models"]
    assert g.ctl("status").returncode == 0


def test_isolate_cache_gives_no_cross_key_prefix_reuse(guardian_factory: Callable[..., Guardian]) -> None:
    """auth.isolate_cache: key B sending key A's prompt reuses nothing (cache_n 0), on /v1
    and /api/chat; with it off the same probe shows the reuse the audit exploited."""
    prompt = [{"role": "user", "content": "the secret code is 4711. " * 20}]
    body = {"model": "demo-a", "messages": prompt, "max_tokens": 1, "temperature": 0}

    def reused(isolate: bool) -> int:
        g = guardian_factory(settings={"auth": {"isolate_cache": isolate}})
        a = {"Authorization": "Bearer " + g.ctl("keys", "create", "a").stdout.strip()}
        b = {"Authorization": "Bearer " + g.ctl("keys", "create", "b").stdout.strip()}
        assert httpx.post(g.url + "/v1/chat/completions", json=body, headers=a, timeout=60).status_code == 200
        r = httpx.post(g.url + "/v1/chat/completions", json=body, headers=b, timeout=60)
        assert r.status_code == 200, r.text
        ollama = {"model": "demo-a", "messages": prompt, "stream": False, "options": {"num_predict": 1}}
        o = httpx.post(g.url + "/api/chat", json=ollama, headers=b, timeout=60).json()
        g.close()
        return int(r.json()["timings"]["cache_n"]) + (o["prompt_eval_count"] < 100)

    assert reused(False) > 0
    assert reused(True) == 0
