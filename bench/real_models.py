#!/usr/bin/env python3
"""Gemma 3 270M Q4_K_M through Guardian on both backends (ik_llama.cpp and upstream).

Per flavor, interleaved so drift hits both sides equally:
  1. streamed tokens per second through Guardian's /v1 as a ratio of direct to llama-server;
  2. a swap to it from the other flavor: time to first token, against llama-server's own
     start-to-ready time for the same argv (started by hand, /health polled every 2 ms)
     plus its warm time to first token.

Run: .venv/bin/python bench/real_models.py [--runs N] [--gen-tokens N]  (needs `make models`)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from proxy_overhead import _ready, stream_rate  # noqa: E402

from tests.harness import VENV_BIN, Guardian  # noqa: E402

GEMMA = ROOT / "data" / "models" / "gemma-3-270m-q4_k_m.gguf"
FLAVORS = {"ik": "gemma-ik", "upstream": "gemma-up"}
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


async def measure(g: Guardian, runs: int, gen_tokens: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    body = {
        "messages": PROMPT,
        "max_tokens": gen_tokens,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
    }
    gv1 = g.url + "/v1/chat/completions"
    # No keep-alive: llama-server closes a connection after a streamed answer without saying so.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as s:
        for flavor, name in FLAVORS.items():
            other = next(n for n in FLAVORS.values() if n != name)
            await stream_rate(s, gv1, {**body, "model": other, "max_tokens": 4})  # the other one is up
            swap_ttft = (await stream_rate(s, gv1, {**body, "model": name, "max_tokens": 4}))[1]
            m = g.model(name)
            direct = f"http://127.0.0.1:{m['port']}/v1/chat/completions"
            key = g.child_headers(name)
            warm_ttft = (await stream_rate(s, direct, {**body, "max_tokens": 4}, headers=key))[1]
            d_rate, g_rate = [], []
            for _ in range(runs):
                d_rate.append((await stream_rate(s, direct, body, headers=key))[0])
                g_rate.append((await stream_rate(s, gv1, {**body, "model": name}))[0])
            argv = list(m["argv"])
            ready = await _ready(argv)
            out[flavor] = {
                "direct_tok_s": statistics.median(d_rate),
                "guardian_tok_s": statistics.median(g_rate),
                "ratio": statistics.median(g_rate) / statistics.median(d_rate),
                "ratio_min": min(g_rate) / max(d_rate),
                "ratio_max": max(g_rate) / min(d_rate),
                "swap_ttft_ms": swap_ttft * 1e3,
                "llama_start_to_ready_ms": ready * 1e3,
                "warm_ttft_ms": warm_ttft * 1e3,
                "swap_overhead_ms": (swap_ttft - ready - warm_ttft) * 1e3,
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gen-tokens", type=int, default=128)
    args = ap.parse_args()
    if not GEMMA.exists():
        sys.exit(f"{GEMMA} is missing: run `make models`")
    ik = VENV_BIN / "llama-server-ik"
    with tempfile.TemporaryDirectory(prefix="guardian-real-") as tmp:
        os.chdir(tmp)  # ik started by hand writes llama.log into its working directory
        models = {
            "gemma-ik": {"path": str(GEMMA), "context": 2048, "backend": "ik_fork", "chat_template": "gemma"},
            "gemma-up": {
                "path": str(GEMMA),
                "context": 2048,
                "backend": "official",
                "chat_template": "gemma",
            },
        }
        settings = {
            "backends": {"ik_fork": {"binary": str(ik), "flavor": "ik"}},
            "logging": {"level": "warning"},
            "max_loaded_models": 1,
        }
        g = Guardian(Path(tmp) / "g", models, settings)
        g.start()
        try:
            figures = asyncio.run(measure(g, args.runs, args.gen_tokens))
        finally:
            g.close()
    for flavor, fig in figures.items():
        print(f"{flavor}:")
        for k, v in fig.items():
            print(f"  {k:<26} {v:10.3f}")


if __name__ == "__main__":
    main()
