#!/usr/bin/env python3
"""Mixed load across two models that cannot be resident together (issue 12's load).

8 clients, each alternating between model A and model B, 64 short requests in all, with
room for one model at a time. Three servers, same llama-server binary:
  - Guardian (max_loaded_models: 1): collates the queue, swaps once per phase;
  - per-request swap: the same 64 requests one at a time in the clients' interleaved
    order, each to the other model, so every request pays a swap (what a FIFO scheduler
    without collation does under this load);
  - llama.cpp's own router mode (`--models-dir`, `--models-max 1`), for reference.
Two pairs: the tiny demo models, and the real Gemma 3 270M Q4_K_M beside a tiny one.
Prints wall time, p50/p99 request latency and the number of loads.

Run: .venv/bin/python bench/mixed_load.py [--pairs tiny,real] [--clients 8] [--per-client 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardian_supervisor.demo_models import DEMO_MODELS, write_tiny_llama  # noqa: E402
from tests.harness import Guardian, free_port, llama_server_binary  # noqa: E402

GEMMA = ROOT / "data" / "models" / "gemma-3-270m-q4_k_m.gguf"
CTX = 1024


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def one(s: aiohttp.ClientSession, url: str, model: str) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    t0 = time.perf_counter()
    async with s.post(url + "/v1/chat/completions", json=body) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{model}: {r.status} {(await r.text())[:200]}")
    return time.perf_counter() - t0


async def mixed(
    url: str, models: tuple[str, str], clients: int, per_client: int
) -> tuple[float, list[float]]:
    lat: list[float] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def client(i: int) -> None:
            for k in range(per_client):
                lat.append(await one(s, url, models[(i + k) % 2]))

        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return time.perf_counter() - t0, lat


async def serial(url: str, models: tuple[str, str], n: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        t0 = time.perf_counter()
        for k in range(n):
            lat.append(await one(s, url, models[k % 2]))
        return time.perf_counter() - t0, lat


def guardian_loads(g: Guardian) -> int:
    return sum(
        p.read_text(errors="replace").count(" start: ") for p in (g.root / "data" / "logs").glob("*.log")
    )


def report(label: str, wall: float, lat: list[float], loads: int) -> None:
    print(
        f"  {label:<22} wall {wall:6.2f} s   p50 {statistics.median(lat) * 1000:7.0f} ms   "
        f"p99 {pct(lat, 99) * 1000:7.0f} ms   loads {loads:3d}   ({len(lat)} requests)",
        flush=True,
    )


def run_guardian(root: Path, files: dict[str, Path], args: argparse.Namespace) -> None:
    models = {name: {"path": str(path), "context": CTX} for name, path in files.items()}
    names = tuple(files)
    assert len(names) == 2
    pair = (names[0], names[1])
    g = Guardian(root / "guardian", models, {"max_loaded_models": 1})
    try:
        g.start()
        wall, lat = asyncio.run(mixed(g.url, pair, args.clients, args.per_client))
        report("Guardian", wall, lat, guardian_loads(g))
    finally:
        g.close()
    g = Guardian(root / "serial", models, {"max_loaded_models": 1})
    try:
        g.start()
        wall, lat = asyncio.run(serial(g.url, pair, args.clients * args.per_client))
        report("per-request swap", wall, lat, guardian_loads(g))
    finally:
        g.close()


def run_router(root: Path, files: dict[str, Path], args: argparse.Namespace) -> None:
    d = root / "router-models"
    d.mkdir()
    for name, path in files.items():
        (d / f"{name}.gguf").symlink_to(path)
    port = free_port()
    log = root / "router.log"
    argv = [
        llama_server_binary(),
        "--models-dir",
        str(d),
        "--models-max",
        "1",
        "--port",
        str(port),
        "-c",
        str(CTX),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        names = tuple(files)
        wall, lat = asyncio.run(mixed(url, (names[0], names[1]), args.clients, args.per_client))
        loads = log.read_text(errors="replace").count("spawning server instance with name=")
        report("llama.cpp router", wall, lat, loads)
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="tiny,real")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="guardian-mixed-") as tmp:
        root = Path(tmp)
        tiny = {}
        for name in ("demo-a", "demo-b"):
            tiny[name] = root / f"{name}.gguf"
            write_tiny_llama(tiny[name], DEMO_MODELS[name])
        pairs: dict[str, dict[str, Path]] = {"tiny": tiny}
        if GEMMA.exists():
            pairs["real"] = {"gemma": GEMMA, "demo-a": tiny["demo-a"]}
        for label in args.pairs.split(","):
            if label not in pairs:
                print(f"{label}: skipped ({GEMMA} missing: run `make models`)")
                continue
            files = pairs[label]
            print(
                f"{label}: {' + '.join(f'{n} ({p.stat().st_size / 2**20:.0f} MiB)' for n, p in files.items())}, "
                f"{args.clients} clients x {args.per_client} requests, one model at a time",
                flush=True,
            )
            sub = root / label
            sub.mkdir()
            run_guardian(sub, files, args)
            run_router(sub, files, args)


if __name__ == "__main__":
    main()
