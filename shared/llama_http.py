"""How the proxy's connection pool and llama-server's HTTP threads fit together.

llama-server (cpp-httplib) serves each connection on one thread from a fixed pool, and an
idle kept-alive connection keeps its thread for up to 5 s. Its default pool is
max(-np + 2, cores - 1): on a 2-core box, 3 threads, so a proxy pool of 8 kept-alive
connections left 5 of 8 requests waiting ~5 s on a READY model. The proxy keeps at most
POOL_PER_SERVER connections to one server, and every server gets more threads than that
(the rest serve the supervisor's /health, /slots and slot saves).
"""

from __future__ import annotations

POOL_PER_SERVER = 32
SPARE_THREADS = 4


def http_threads(parallel: int) -> int:
    """`--threads-http` for a server with `parallel` slots."""
    return POOL_PER_SERVER + max(1, parallel) + SPARE_THREADS
