"""Port picking as both servers bind: a port in TIME_WAIT is not offered (ik binds SO_REUSEPORT only)."""

from __future__ import annotations

import socket

from guardian_supervisor.models.ports import bindable, free_port


def _port_in_time_wait() -> int:
    """A port whose listener closed after its side of a connection closed first (TIME_WAIT)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first, as llama-server does on shutdown
    client.close()
    listener.close()
    return port


def test_a_port_in_time_wait_is_not_bindable_the_ik_way():
    port = _port_in_time_wait()
    with socket.socket() as s:  # upstream's way still binds it: the old probe said "free"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert not bindable(port)
    assert free_port(port, set()) not in (None, port)


def test_free_port_skips_used_and_listening_ports():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert not bindable(busy)
        got = free_port(busy, {busy + 1})
        assert got is not None and got not in (busy, busy + 1) and bindable(got)
