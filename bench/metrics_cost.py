#!/usr/bin/env python3
"""What counting costs per request on the proxy's hot path, and what one scrape costs.

Times ProxyMetrics.observe (what the middleware does once per request: counters and
histograms by label) and the per-chunk work of a streamed relay (one assignment, one check),
and the text rendering of a registry holding 20 models' families. Prints figures.

Run: .venv/bin/python bench/metrics_cost.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import generate_latest

from guardian_proxy import metrics as pm


def per_call_us(fn: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    m = pm.ProxyMetrics(link=None)  # type: ignore[arg-type]  # render() is not called here
    models = [f"model-{i}" for i in range(20)]
    routes = ["/api/chat", "/api/generate", "/v1/chat/completions", "/v1/embeddings"]
    i = 0

    def one_request() -> None:
        nonlocal i
        i += 1
        s = pm.RequestStats(time.perf_counter(), model=models[i % 20], waited_s=0.001, acquire_s=0.001)
        s.first_byte, s.prompt_tokens, s.generated_tokens, s.predicted_ms = s.t0 + 0.01, 30, 100, 50.0
        token = pm.CURRENT.set(s)
        pm.CURRENT.reset(token)
        m.observe(s, routes[i % 4], 200)

    chunk = b"data: {}\n\n"
    prev = last = b""

    def one_chunk() -> None:
        nonlocal prev, last
        if not last:
            pm.note_first_byte()
        prev, last = last, chunk

    for _ in range(2000):
        one_request()
    print(f"{'observe_per_request_us':<28}{per_call_us(one_request, 50_000):>10.2f}")
    print(f"{'stream_bookkeeping_per_chunk_us':<28}{per_call_us(one_chunk, 500_000):>10.3f}")
    t0 = time.perf_counter()
    text = generate_latest(m.registry)
    print(f"{'render_proxy_families_ms':<28}{(time.perf_counter() - t0) * 1000:>10.2f}")
    print(f"{'exposition_bytes':<28}{len(text):>10}")


if __name__ == "__main__":
    main()
