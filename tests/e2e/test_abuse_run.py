"""The audit's abuse run, bounded (issue 13's "Figure"): slowloris, connection floods, a big
body and deep nesting against a real Guardian; prints the process's fds and RSS before/after.

The non-reading-client case lives with the lease watchdog (issue 12's tests).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx
import psutil
import pytest

from tests.harness import Guardian

HALF_SENT = 300


def _half_sent(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    return s


def _usage(proc: psutil.Process) -> tuple[int, float]:
    return proc.num_fds(), proc.memory_info().rss / 2**20


def test_abuse_run(guardian_factory: Callable[..., Guardian], capsys: pytest.CaptureFixture[str]) -> None:
    g = guardian_factory(
        settings={"proxy": {"header_timeout_s": 1.5, "max_connections": 200, "max_connections_per_ip": 150}}
    )
    proc = psutil.Process(g.procs["guardian"].pid)
    chat = {"model": "demo-a", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert (
        httpx.post(g.url + "/api/chat", json={**chat, "options": {"num_predict": 2}}, timeout=60).status_code
        == 200
    )
    fds0, rss0 = _usage(proc)

    # Slowloris: more half-sent requests than the per-IP cap. The surplus is refused at once
    # (503), the rest are cut at the header timeout; fds stay bounded and RPC keeps working.
    socks = [_half_sent(g.port) for _ in range(HALF_SENT)]
    try:
        fds_peak, _ = _usage(proc)
        assert fds_peak < fds0 + 150 + 20, "per-IP cap not enforced"
        busy = 0
        for s in socks[150:]:
            s.settimeout(5)
            if s.recv(4096).startswith(b"HTTP/1.1 503"):
                busy += 1
        assert busy == HALF_SENT - 150
        assert g.rpc("models.status")["models"]  # the supervisor's socket still answers
        time.sleep(2.5)
        for s in socks[:150]:
            s.settimeout(5)
            assert s.recv(4096) == b""  # closed by the proxy (reset would raise, also fine)
    except ConnectionResetError:
        pass
    finally:
        for s in socks:
            s.close()
    assert (
        httpx.post(g.url + "/api/chat", json={**chat, "options": {"num_predict": 2}}, timeout=60).status_code
        == 200
    )

    # A 20 MiB body (under the 24 MiB default) of one long message, and one over the limit.
    big = {**chat, "messages": [{"role": "user", "content": "a" * (20 * 2**20)}]}
    r = httpx.post(g.url + "/api/chat", json=big, timeout=120)
    assert r.status_code in (200, 400, 500), r.text[:200]  # llama-server may refuse the size
    r = httpx.post(g.url + "/api/chat", content=b"x" * (25 * 2**20), timeout=60)
    assert r.status_code == 413 and "proxy.max_body_mb" in r.text
    deep = b'{"model": "demo-a", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    assert httpx.post(g.url + "/api/chat", content=deep, timeout=30).status_code == 400

    time.sleep(0.5)
    fds1, rss1 = _usage(proc)
    with capsys.disabled():
        print(
            f"\nabuse run: guardian fds {fds0} -> {fds1} (peak {fds_peak}), RSS {rss0:.0f} -> {rss1:.0f} MiB"
        )
    assert fds1 <= fds0 + 10
