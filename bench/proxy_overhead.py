#!/usr/bin/env python3
"""What Guardian costs on the request path, measured against llama-server itself.

In one run, interleaved so drift hits both sides equally, on the tiny demo model:
  1. added latency per non-streamed request (p50, p99): through Guardian minus direct;
  2. streamed tokens per second through Guardian as a ratio of direct (/v1 and /api/chat);
  3. for a swap, time to first token beyond llama-server's own start-to-ready time.

Run: `make bench` (or .venv/bin/python bench/proxy_overhead.py [--requests N]). Prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardian_supervisor.demo_models import DEMO_MODELS, write_tiny_llama  # noqa: E402
from tests.harness import Guardian, free_port  # noqa: E402

CHAT: dict[str, Any] = {
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 1,
    "temperature": 0,
}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def timed_post(
    s: aiohttp.ClientSession, url: str, body: dict, headers: dict[str, str] | None = None
) -> float:
    t0 = time.perf_counter()
    async with s.post(url, json=body, headers=headers) as r:
        await r.read()
        assert r.status == 200, await r.text()
    return time.perf_counter() - t0


async def stream_rate(
    s: aiohttp.ClientSession,
    url: str,
    body: dict,
    ndjson: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[float, float]:
    """(tokens per second after the first token, time to first token) of one streamed request."""
    t0 = time.perf_counter()
    first = None
    n = 0
    async with s.post(url, json=body, headers=headers) as r:
        async for line in r.content:
            if ndjson:
                if not line.strip():
                    continue
                obj = json.loads(line)
                if obj.get("done"):
                    break
                if obj.get("message", {}).get("content"):
                    n += 1
                    first = first or time.perf_counter()
            elif line.startswith(b"data: {") and b'"content":"' in line:
                n += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    assert first is not None and n > 1, "no tokens streamed"
    return (n - 1) / (end - first), first - t0


async def health_ready_time(argv: list[str], port: int) -> float:
    """llama-server's own start-to-ready time: spawn the same argv, poll /health every 2 ms."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(
                        f"http://127.0.0.1:{port}/health", timeout=aiohttp.ClientTimeout(total=0.05)
                    ) as r:
                        if r.status == 200:
                            return time.perf_counter() - t0
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.002)
    finally:
        proc.terminate()
        await proc.wait()


def with_port(argv: list[str], port: int) -> list[str]:
    out = list(argv)
    out[out.index("--port") + 1] = str(port)
    return out


async def main_async(g: Guardian, n: int, gen_tokens: int, swaps: int) -> dict[str, float]:
    gv1 = g.url + "/v1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await timed_post(s, gv1, {**CHAT, "model": "demo-a"})  # load it
        st = {m["name"]: m for m in g.status()["models"]}
        direct = f"http://127.0.0.1:{st['demo-a']['port']}/v1/chat/completions"
        key = g.child_headers("demo-a")  # each llama-server has a key of Guardian's own
        for _ in range(30):  # warm both paths
            await timed_post(s, direct, {**CHAT, "model": "demo-a"}, key)
            await timed_post(s, gv1, {**CHAT, "model": "demo-a"})
        d_lat, g_lat = [], []
        for _ in range(n):
            d_lat.append(await timed_post(s, direct, {**CHAT, "model": "demo-a"}, key))
            g_lat.append(await timed_post(s, gv1, {**CHAT, "model": "demo-a"}))

        body = {**CHAT, "model": "demo-a", "max_tokens": gen_tokens, "stream": True, "ignore_eos": True}
        # /api/chat has no ignore_eos (Ollama ignores the key): this prompt is one the tiny
        # demo model answers with no EOS for 400 tokens at temperature 0.
        ollama: dict[str, Any] = {
            "model": "demo-a",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "options": {"num_predict": gen_tokens, "temperature": 0},
        }
        d_rate, g_rate, o_rate = [], [], []
        has_ollama = True
        for _ in range(15):
            d_rate.append((await stream_rate(s, direct, body, headers=key))[0])
            g_rate.append((await stream_rate(s, gv1, body))[0])
            if has_ollama:
                try:
                    o_rate.append((await stream_rate(s, g.url + "/api/chat", ollama, ndjson=True))[0])
                except (AssertionError, ValueError, aiohttp.ClientError):
                    has_ollama = False

        # Swap: request demo-b while demo-a is resident (and back), time to first token;
        # compare with the same llama-server argv started by hand, timed to /health 200.
        swap_ttft, ready, warm_ttft = [], [], []
        for i in range(swaps):
            target = "demo-b" if i % 2 == 0 else "demo-a"
            _rate, ttft = await stream_rate(s, gv1, {**body, "model": target, "max_tokens": 4})
            swap_ttft.append(ttft)
            m = g.model(target)
            warm_ttft.append(
                (
                    await stream_rate(
                        s,
                        f"http://127.0.0.1:{m['port']}/v1/chat/completions",
                        {**body, "max_tokens": 4},
                        headers=g.child_headers(target),
                    )
                )[1]
            )
            ready.append(await _ready(m["argv"]))
    out = {
        "requests": n,
        "direct_p50_ms": pct(d_lat, 50) * 1e3,
        "direct_p99_ms": pct(d_lat, 99) * 1e3,
        "guardian_p50_ms": pct(g_lat, 50) * 1e3,
        "guardian_p99_ms": pct(g_lat, 99) * 1e3,
        "added_p50_ms": (pct(g_lat, 50) - pct(d_lat, 50)) * 1e3,
        "added_p99_ms": (pct(g_lat, 99) - pct(d_lat, 99)) * 1e3,
        "stream_direct_tok_s": statistics.median(d_rate),
        "stream_v1_tok_s": statistics.median(g_rate),
        "stream_v1_ratio": statistics.median(g_rate) / statistics.median(d_rate),
        "swap_ttft_ms": statistics.median(swap_ttft) * 1e3,
        "llama_start_to_ready_ms": statistics.median(ready) * 1e3,
        "warm_ttft_ms": statistics.median(warm_ttft) * 1e3,
        "swap_overhead_ms": (
            statistics.median(swap_ttft) - statistics.median(ready) - statistics.median(warm_ttft)
        )
        * 1e3,
    }
    if o_rate:
        out["stream_api_chat_tok_s"] = statistics.median(o_rate)
        out["stream_api_chat_ratio"] = statistics.median(o_rate) / statistics.median(d_rate)
    return out


async def _ready(argv: list[str]) -> float:
    port = free_port()
    return await health_ready_time(with_port(argv, port), port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--gen-tokens", type=int, default=400)
    ap.add_argument("--swaps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="llama-server -t (0: its default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {}
        for name, spec in DEMO_MODELS.items():
            write_tiny_llama(root / f"{name}.gguf", spec)
            models[name] = {
                "path": str(root / f"{name}.gguf"),
                "context": 2048,
                **({"threads": args.threads} if args.threads else {}),
            }
        g = Guardian(root / "g", models, {"logging": {"level": "warning"}, "max_loaded_models": 1})
        g.start()
        try:
            figures = asyncio.run(main_async(g, args.requests, args.gen_tokens, args.swaps))
        finally:
            g.close()
    width = max(map(len, figures))
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:10.3f}" if isinstance(v, float) else f"{k:<{width}}  {v:>10}")


if __name__ == "__main__":
    main()
