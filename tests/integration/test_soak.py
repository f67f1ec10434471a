"""A bounded soak: thousands of requests, three models, 16 clients, some hanging up mid-stream.

Afterwards nothing is left over: no lease, no stray child, no leaked file descriptor, and the
proxy's memory is flat. Also: a supervisor restart is survived without a hang.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

import aiohttp
import psutil
import pytest

from tests.harness import write_fake_config

pytestmark = pytest.mark.timeout(240)

MODELS = ("m1", "m2", "m3")
TOTAL = 2000
CLIENTS = 16


@pytest.fixture
def soak_guardian(guardian_factory, model_dir, tmp_path):
    cfg = tmp_path / "fake.json"
    write_fake_config(cfg, {"content": ["a", "b", "c", "d", "e", "f"], "load_delay_s": 0.05})
    models = {m: {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512} for m in MODELS}
    settings = {
        "max_loaded_models": 2,
        "logging": {"level": "warning"},
        "supervisor": {"swap_fairness_s": 0.5},
    }
    g = guardian_factory(models, settings, {"FAKE_LLAMA_CONFIG": str(cfg)}, start="guardian-supervisor")
    g.start("guardian-proxy")
    return g


async def one(session: aiohttp.ClientSession, url: str, model: str, stream: bool, hang_up: bool) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with session.post(url, json=body) as r:
        if r.status != 200:
            return f"status {r.status}: {await r.text()}"
        if not stream:
            got = (await r.json())["model"]
            return "ok" if got == model else f"answered by {got}"
        names = set()
        async for line in r.content:
            if line.startswith(b"data: {"):
                names.add(json.loads(line[6:])["model"])
                if hang_up:
                    return "hung up"  # leaving the block closes the connection mid-stream
        return "ok" if names == {model} else f"answered by {names}"


async def soak(url: str, n: int) -> dict[str, int]:
    rng = random.Random(7)
    jobs = [(rng.choice(MODELS), rng.random() < 0.5, rng.random() < 0.1) for _ in range(n)]
    outcomes: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=CLIENTS)) as s:

        async def worker() -> None:
            while jobs:
                model, stream, hang_up = jobs.pop()
                result = await one(s, url, model, stream, hang_up and stream)
                outcomes[result] = outcomes.get(result, 0) + 1

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return outcomes


def test_soak_leaves_nothing_behind(soak_guardian):
    g = soak_guardian
    url = g.url + "/v1/chat/completions"
    proxy = psutil.Process(g.procs["guardian-proxy"].pid)
    asyncio.run(soak(url, 200))  # warm up: pools, caches, imports
    fds_before, rss_before = proxy.num_fds(), proxy.memory_info().rss
    t0 = time.monotonic()
    outcomes = asyncio.run(soak(url, TOTAL))
    took = time.monotonic() - t0
    failures = {k: v for k, v in outcomes.items() if k not in ("ok", "hung up")}
    assert not failures, failures
    assert outcomes.get("hung up", 0) > 50 and outcomes["ok"] + outcomes["hung up"] == TOTAL
    time.sleep(0.5)
    st = g.status()
    assert st["leases"] == 0 and st["queued"] == 0
    running = {m["pid"] for m in st["models"] if m["pid"]}
    assert len(running) <= 2 and set(g.child_pids()) == running, "no stray llama-server"
    fds_after, rss_after = proxy.num_fds(), proxy.memory_info().rss
    assert fds_after <= fds_before + 8, (fds_before, fds_after)
    assert rss_after - rss_before < 30 * 2**20, (rss_before, rss_after)
    print(
        f"soak: {TOTAL} requests in {took:.1f}s, {outcomes}, proxy fds {fds_before}->{fds_after}, rss {rss_before >> 20}->{rss_after >> 20} MiB"
    )


def test_supervisor_restart_is_survived(soak_guardian):
    g = soak_guardian
    url = g.url + "/v1/chat/completions"
    assert asyncio.run(soak(url, 20)) == {"ok": 20}
    g.stop("guardian-supervisor", signal.SIGKILL)  # children die with it (PDEATHSIG)
    time.sleep(0.2)
    assert g.child_pids() == []

    async def during() -> tuple[int, str | None, float]:
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            body = {"model": "m1", "messages": [{"role": "user", "content": "x"}]}
            async with s.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
                return r.status, r.headers.get("Retry-After"), time.monotonic() - t0

    status, retry, took = asyncio.run(during())
    assert status == 503 and retry and took < 2
    g.socket.unlink(missing_ok=True)  # a SIGKILLed supervisor leaves its socket file
    g.start("guardian-supervisor")
    assert asyncio.run(soak(url, 20)) == {"ok": 20}, "the proxy reconnected by itself"
