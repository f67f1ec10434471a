"""Host header allow-list against DNS rebinding, as Ollama does it.

A web page on evil.example that rebinds its name to 127.0.0.1 reaches a loopback Guardian with
`Host: evil.example`. While Guardian listens on loopback only, requests must name a local host
(localhost, *.localhost, *.local, *.internal, an IP address, this machine's name) or one in
`proxy.allowed_hosts`; anything else is 403. Listening beyond loopback, the check is off
(Ollama's rule too: a remote name is then expected), unless allowed_hosts is set.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from guardian_proxy.errors_http import api_error

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def _strip_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:11434
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(host: str, extra: frozenset[str], machine: str) -> bool:
    name = _strip_port(host).rstrip(".")
    if not name or name in extra or _is_ip(name):
        return True
    return name in ("localhost", machine) or name.endswith(_LOCAL_SUFFIXES)


def is_loopback(bind_host: str) -> bool:
    if bind_host == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        return False


def make_host_middleware(bind_host: str, allowed_hosts: Iterable[str]) -> Middleware | None:
    """The middleware, or None when the check does not apply (bound beyond loopback)."""
    extra = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts)
    if not is_loopback(bind_host) and not extra:
        return None
    machine = socket.gethostname().lower()  # once, at start: not on the request path

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host", ""), extra, machine):
            return api_error(
                request,
                403,
                f"Host '{request.headers.get('Host')}' is not allowed: use localhost, or add the "
                "name to proxy.allowed_hosts in settings.yaml",
            )
        return await handler(request)

    return check_host
