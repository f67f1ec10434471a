"""Faults a real llama-server can't produce on cue, through the whole stack, with the fake."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx
import psutil
import pytest

from tests.harness import write_fake_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fake_guardian(guardian_factory, model_dir, tmp_path):
    """Guardian whose models run the fake llama-server; returns (make, config_path, record)."""
    cfg = tmp_path / "fake.json"
    record = tmp_path / "record.jsonl"
    write_fake_config(cfg)

    def make(models=None, settings=None, behaviour=None, per_model=None, start="guardian"):
        write_fake_config(cfg, behaviour, per_model)
        models = models or {
            "fa": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512},
            "fb": {"path": str(model_dir / "demo-b.gguf"), "backend": "fake", "context": 512},
        }
        env = {"FAKE_LLAMA_CONFIG": str(cfg), "FAKE_LLAMA_RECORD": str(record)}
        return guardian_factory(models, settings, env, start=start)

    return make, cfg, record


def chat(url: str, model: str, stream: bool = False, timeout: float = 30) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout)


def test_requests_during_a_slow_load_join_it(fake_guardian):
    make, _cfg, _rec = fake_guardian
    g = make(behaviour={"load_delay_s": 1.0})

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as c:
            body = {"model": "fa", "messages": [{"role": "user", "content": "x"}]}
            return await asyncio.gather(
                *(c.post(g.url + "/v1/chat/completions", json=body) for _ in range(6))
            )

    t0 = time.monotonic()
    rs = asyncio.run(burst())
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    assert time.monotonic() - t0 < 3, "six requests shared one load of about 1 s"
    log = (g.root / "data" / "logs" / "fa.log").read_text()
    assert log.count(" start: ") == 1, "only one server was started"


def test_crash_mid_stream_gives_clean_error_and_restarts(fake_guardian):
    make, cfg, _rec = fake_guardian
    g = make(
        behaviour={"crash_mid_stream_after": 2, "content": ["a", "b", "c", "d", "e"], "token_delay_s": 0.05}
    )
    r = chat(g.url, "fa", stream=True)
    assert r.status_code == 200
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert "error" in events[-1] and "broke off" in events[-1]["error"]["message"]
    deadline = time.monotonic() + 5
    while g.model("fa")["state"] != "FAILED" and time.monotonic() < deadline:
        time.sleep(0.02)
    m = g.model("fa")
    assert m["state"] == "FAILED" and "exited unexpectedly" in m["last_error"]
    assert m["log_tail"], "the last log lines are attached"
    write_fake_config(cfg, {"content": ["ok"]})
    r = chat(g.url, "fa")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
    assert g.model("fa")["state"] == "READY"


def test_server_ignoring_sigterm_is_killed_after_grace(fake_guardian):
    make, _cfg, _rec = fake_guardian
    g = make(
        settings={"supervisor": {"stop_grace_s": 1}, "max_loaded_models": 1},
        per_model={"fa": {"ignore_sigterm": True}},
    )
    assert chat(g.url, "fa").status_code == 200
    pid = g.model("fa")["pid"]
    t0 = time.monotonic()
    assert chat(g.url, "fb").status_code == 200  # the swap must get rid of fa
    took = time.monotonic() - t0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert 0.9 < took < 5, f"swap took {took:.2f}s: SIGKILL should follow a 1 s grace"


def test_ik_flavor_quirks(fake_guardian, model_dir):
    """ik logs on stdout and its /health hangs while loading; readiness is still found fast."""
    make, _cfg, _rec = fake_guardian
    models = {"ik": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake_ik", "context": 512}}
    g = make(models=models, behaviour={"flavor": "ik", "load_delay_s": 0.5})
    t0 = time.monotonic()
    r = chat(g.url, "ik")
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 2.0
    argv = g.model("ik")["argv"]
    assert "--jinja" in argv and "-fit" not in argv
    assert any(
        "HTTP server listening" in line
        for line in (g.root / "data" / "logs" / "ik.log").read_text().splitlines()
    )


def test_ik_rejects_stale_fmoe_flag_with_a_clear_error(fake_guardian, model_dir):
    make, _cfg, _rec = fake_guardian
    models = {"ik": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake_ik", "extra_args": "-fmoe"}}
    g = make(models=models, behaviour={"flavor": "ik"})
    r = chat(g.url, "ik")
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "'ik'" in msg and "-fmoe" in msg


def test_load_hang_is_killed_at_tier_timeout(fake_guardian):
    make, _cfg, _rec = fake_guardian
    settings = {
        "timeouts": {"tiers": {"all": {"min_size_mb": 0, "timeout_seconds": 30, "load_timeout_seconds": 1}}}
    }
    g = make(settings=settings, behaviour={"hang_forever_loading": True})
    t0 = time.monotonic()
    r = chat(g.url, "fa")
    assert r.status_code == 504
    assert "did not become ready within 1 s" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 5
    assert g.model("fa")["state"] == "FAILED" and g.child_pids() == []


def test_load_failure_reports_log_tail(fake_guardian):
    make, _cfg, _rec = fake_guardian
    g = make(behaviour={"load_fail": True})
    r = chat(g.url, "fa")
    assert r.status_code == 500
    assert "failed to load" in r.json()["error"]["message"]
    assert any("loading error" in line for line in g.model("fa")["log_tail"])


def test_proxy_death_drops_its_leases(fake_guardian):
    make, _cfg, _rec = fake_guardian
    g = make(behaviour={"content": ["x"] * 200, "token_delay_s": 0.05}, start="guardian-supervisor")
    g.start("guardian-proxy")
    got_first = threading.Event()

    def slow_stream() -> None:
        try:
            with httpx.stream(
                "POST",
                g.url + "/v1/chat/completions",
                json={"model": "fa", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                timeout=30,
            ) as r:
                for _ in r.iter_lines():
                    got_first.set()
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=slow_stream, daemon=True)
    t.start()
    assert got_first.wait(10)
    assert g.status()["leases"] == 1
    g.stop("guardian-proxy", signal.SIGKILL)
    deadline = time.monotonic() + 2
    while g.status()["leases"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert g.status()["leases"] == 0


def test_supervisor_unreachable_is_503_not_a_hang(fake_guardian):
    make, _cfg, _rec = fake_guardian
    g = make(start="guardian-proxy")
    t0 = time.monotonic()
    r = chat(g.url, "fa", timeout=10)
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert "not running" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 2
    g.start("guardian-supervisor")  # the proxy reconnects by itself
    assert chat(g.url, "fa").status_code == 200


def test_client_disconnect_cancels_upstream_and_frees_lease(fake_guardian):
    make, _cfg, record = fake_guardian
    g = make(behaviour={"content": ["x"] * 400, "token_delay_s": 0.02})
    with httpx.stream(
        "POST",
        g.url + "/v1/chat/completions",
        json={"model": "fa", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=30,
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break
    deadline = time.monotonic() + 3
    while g.status()["leases"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert g.status()["leases"] == 0, "the lease is freed when the client goes away"
    time.sleep(0.3)
    # The fake records each request; the upstream connection was closed, so the stream ended
    # well before its 400 tokens (8 s) would have.
    assert record.exists() and "/v1/chat/completions" in record.read_text()


def test_request_timeout_comes_from_the_size_tier(fake_guardian):
    make, _cfg, _rec = fake_guardian
    settings = {
        "timeouts": {
            "tiers": {
                "small": {"min_size_mb": 0, "timeout_seconds": 1},
                "big": {"min_size_mb": 50000, "timeout_seconds": 900},
            }
        }
    }
    g = make(settings=settings, behaviour={"content": ["x"] * 40, "token_delay_s": 0.1})
    t0 = time.monotonic()
    r = chat(g.url, "fa")
    assert r.status_code == 504 and "within 1 s" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 3
    r = chat(g.url, "fa", stream=True)  # a stream that outlives its tier ends with an error event
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert "error" in events[-1]
    assert g.status()["leases"] == 0


def test_a_client_that_closes_at_done_is_counted_served_and_one_that_hangs_up_is_not(fake_guardian):
    # The OpenAI SDK closes the response at `data: [DONE]`, while Guardian may still wait for
    # llama-server to end its stream: that is a 200, not a client that went away (499).
    import openai

    from tests.e2e.test_metrics_e2e import scrape, value

    make, cfg, _rec = fake_guardian
    g = make(behaviour={"eof_delay_s": 0.5})
    client = openai.OpenAI(base_url=g.url + "/v1", api_key="none", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="fa", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
    )
    assert chunks
    route = "/v1/chat/completions"
    deadline = time.monotonic() + 10
    while not value(m := scrape(g), "guardian_requests_total", model="fa", route=route):
        assert time.monotonic() < deadline, m.get("guardian_requests_total")
        time.sleep(0.05)
    assert value(m, "guardian_requests_total", model="fa", route=route, status="200") == 1, m
    # Hanging up mid-answer is a 499.
    write_fake_config(cfg, {"content": ["x"] * 100, "token_delay_s": 0.05})
    body = {"model": "fa", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", g.url + route, json=body, timeout=30) as r:
        next(r.iter_raw())
    deadline = time.monotonic() + 10
    while not value(m := scrape(g), "guardian_requests_total", model="fa", route=route, status="499"):
        assert time.monotonic() < deadline, m.get("guardian_requests_total")
        time.sleep(0.05)
    assert value(m, "guardian_requests_total", model="fa", route=route, status="200") == 1
