"""Which TCP port a llama-server child can bind, tested the way the servers bind.

Upstream llama-server binds with SO_REUSEADDR, so a port whose old connections linger in
TIME_WAIT is usable by it. ik_llama.cpp's server binds with SO_REUSEPORT only, which Linux
refuses while such connections linger: a port upstream just released looks free to an
SO_REUSEADDR probe, yet ik cannot bind it. A port is offered only when both ways bind.
"""

from __future__ import annotations

import socket

PORT_ATTEMPTS = 5  # launches on successive ports when the child still fails to bind (a race)


def _binds(host: str, port: int, option: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, option, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """True when both upstream's (SO_REUSEADDR) and ik's (SO_REUSEPORT) bind would succeed."""
    reuseport = getattr(socket, "SO_REUSEPORT", None)
    if not _binds(host, port, socket.SO_REUSEADDR):
        return False
    return reuseport is None or _binds(host, port, reuseport)


def free_port(start: int, used: set[int], host: str = "127.0.0.1") -> int | None:
    """The first port from `start` not in `used` that both servers can bind, or None."""
    for port in range(start, 65535):
        if port not in used and bindable(port, host):
            return port
    return None
