"""Nothing stuck holds anyone else: a llama-server that stops answering, a client that
stops reading. Each test measures the wait it bounds."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import httpx
import pytest

from tests.harness import write_fake_config

pytestmark = pytest.mark.timeout(180)


def wait_until(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, f"{what} not within {timeout:g} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_a_stopped_llama_server_is_killed_and_started_again(guardian_factory, model_dir):
    """SIGSTOP keeps the socket open: without the watchdog the request waits the 600 s tier."""
    g = guardian_factory(
        {"demo-a": {"path": str(model_dir / "demo-a.gguf"), "context": 512}},
        settings={"supervisor": {"health_watchdog_s": 2}},
    )
    body = {"model": "demo-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    assert httpx.post(g.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
    pid = g.model("demo-a")["pid"]
    assert g.model("demo-a")["state"] == "READY"
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = httpx.post(g.url + "/v1/chat/completions", json=body, timeout=60)
        waited = time.monotonic() - t0
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    print(f"stuck llama-server: client answered after {waited:.1f} s (watchdog 2 s, tier 600 s)")
    assert r.status_code >= 500, r.text
    assert "demo-a" in r.text
    assert waited < 15, f"the client waited {waited:.1f} s for a stopped server"
    st = g.model("demo-a")
    # last_restart, not last_error: the restart may already have begun (and cleared that).
    assert "stopped answering /health" in ((st["last_restart"] or {}).get("reason") or ""), st
    # Restarted by the supervisor itself, and the next request is served by a new process.
    wait_until(lambda: g.model("demo-a")["state"] == "READY", 30, "restart")
    r = httpx.post(g.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert g.model("demo-a")["pid"] != pid
    assert "llama_server_stuck" in g.log("guardian")


def test_a_client_that_stops_reading_lets_go_of_its_lease(guardian_factory, model_dir, tmp_path):
    """Before: a non-reading client held its lease (and blocked unload and SIGTERM) for as long
    as llama-server kept the request open."""
    cfg, record = tmp_path / "fake.json", tmp_path / "record.jsonl"
    write_fake_config(cfg, {"content": ["x" * 2000] * 20000})  # ~40 MB: more than any socket buffers
    g = guardian_factory(
        {"fa": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512}},
        settings={"proxy": {"write_timeout_s": 1}},
        env={"FAKE_LLAMA_CONFIG": str(cfg), "FAKE_LLAMA_RECORD": str(record)},
    )
    g.rpc("models.load", {"model": "fa"})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", g.port))
    body = json.dumps(
        {"model": "fa", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        wait_until(lambda: g.model("fa")["inflight"] == 1, 20, "the stream to start")
        held = wait_until(lambda: g.model("fa")["inflight"] == 0, 20, "the lease to be released")
        print(f"non-reading client: lease released after {held:.1f} s (write_timeout_s 1)")
        t0 = time.monotonic()
        out = g.ctl("unload", "fa")
        assert out.returncode == 0, out.stderr
        unload_s = time.monotonic() - t0
        assert g.model("fa")["state"] == "STOPPED"
        assert unload_s < 10, f"unload took {unload_s:.1f} s"
        assert "client_stalled" in g.log("guardian")
        # The aborted connection is closed on our side: reading drains what was sent, then EOF.
        sock.settimeout(10)
        while sock.recv(1 << 20):
            pass
    finally:
        sock.close()
    t0 = time.monotonic()
    g.stop("guardian", timeout=20)
    assert time.monotonic() - t0 < 15
