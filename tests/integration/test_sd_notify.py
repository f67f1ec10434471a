"""systemd Type=notify: the supervisor reports READY=1 once its socket listens."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.timeout(60)


def test_supervisor_notifies_ready_after_socket_listens(guardian_factory, tmp_path):
    g = guardian_factory(start=None)
    addr = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(addr)
        s.settimeout(20)
        g.env["NOTIFY_SOCKET"] = addr
        g.start("guardian-supervisor", wait=False)
        msg = s.recv(4096).decode()
        assert "READY=1" in msg
        assert g.socket.exists(), "READY comes after the socket listens"
        assert oct(g.socket.stat().st_mode & 0o777) == oct(0o660)
        g.stop("guardian-supervisor")
        assert "STOPPING=1" in s.recv(4096).decode()
