"""GET /metrics through the real stack: real requests to a tiny demo model, parsed with
prometheus_client's own text parser; auth with a metrics-scoped key."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(120)


def scrape(g, headers=None) -> dict[str, dict[tuple, float]]:
    r = httpx.get(g.url + "/metrics", headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m, name, **labels) -> float:
    want = set(labels.items())
    return sum(v for k, v in m.get(name, {}).items() if want <= set(k))


def test_metrics_move_with_real_requests(guardian_factory):
    g = guardian_factory()
    before = scrape(g)
    assert value(before, "guardian_supervisor_up") == 1
    assert value(before, "guardian_model_state", model="demo-a", state="STOPPED") == 1

    client = openai.OpenAI(base_url=g.url + "/v1", api_key="none", max_retries=0)
    out = client.chat.completions.create(
        model="demo-a", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert out.choices
    chunks = list(
        client.chat.completions.create(
            model="demo-a", messages=[{"role": "user", "content": "hello"}], max_tokens=5, stream=True
        )
    )
    assert chunks
    r = httpx.post(
        g.url + "/api/generate",
        json={"model": "demo-a", "prompt": "hi", "options": {"num_predict": 4}},
        timeout=30,
    )
    assert r.status_code == 200

    m = scrape(g)
    chat = "/v1/chat/completions"
    assert value(m, "guardian_requests_total", model="demo-a", route=chat, status="200") == 2, m[
        "guardian_requests_total"
    ]
    assert value(m, "guardian_requests_total", model="demo-a", route="/api/generate", status="200") == 1
    assert value(m, "guardian_generated_tokens_total", model="demo-a") >= 3
    assert value(m, "guardian_prompt_tokens_total", model="demo-a") > 0
    assert value(m, "guardian_time_to_first_token_seconds_count", model="demo-a") == 3
    assert value(m, "guardian_request_duration_seconds_count", model="demo-a", route=chat) == 2
    assert value(m, "guardian_request_duration_seconds_bucket", model="demo-a", route=chat, le="+Inf") == 2
    assert value(m, "guardian_proxy_added_seconds_count", route=chat) == 2
    assert value(m, "guardian_queue_wait_seconds_count", model="demo-a") == 3
    # Supervisor side, over the RPC: one load, its time, the state now.
    assert value(m, "guardian_model_loads_total", model="demo-a") == 1
    assert value(m, "guardian_model_load_seconds_count", model="demo-a") == 1
    assert value(m, "guardian_model_load_seconds_sum", model="demo-a") > 0
    assert value(m, "guardian_model_state", model="demo-a", state="READY") == 1
    assert value(m, "guardian_inflight_requests", model="demo-a") == 0
    assert "guardian_queue_depth" in m and "guardian_benchmark_progress_ratio" in m
    assert value(m, "guardian_model_memory_estimate_bytes", model="demo-a") > 0

    # An unknown model is a 404 counted without a model label; an unload is a stop by reason.
    httpx.post(g.url + "/api/chat", json={"model": "nope", "messages": []}, timeout=10)
    g.ctl("unload", "demo-a")
    m = scrape(g)
    assert value(m, "guardian_requests_total", model="", route="/api/chat", status="404") == 1
    assert value(m, "guardian_model_stops_total", model="demo-a", reason="unload") == 1


def test_metrics_need_a_key_with_metrics_scope(guardian_factory):
    g = guardian_factory()
    admin = g.ctl("keys", "create", "admin").stdout.strip()
    reader = g.ctl("keys", "create", "prom", "--models", "metrics").stdout.strip()
    other = g.ctl("keys", "create", "bob", "--models", "demo-b").stdout.strip()
    deadline = time.monotonic() + 2
    while httpx.get(g.url + "/metrics").status_code != 401:
        assert time.monotonic() < deadline, "auth did not turn on for /metrics"
        time.sleep(0.05)
    assert httpx.get(g.url + "/metrics", headers={"Authorization": "Bearer flip_wrong"}).status_code == 401
    m = scrape(g, {"Authorization": f"Bearer {reader}"})
    assert value(m, "guardian_requests_total", status="401") >= 2
    scrape(g, {"X-Api-Key": admin})
    r = httpx.get(g.url + "/metrics", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403 and "--models metrics" in r.json()["error"]
    # The metrics-only key can use no model.
    r = httpx.post(
        g.url + "/api/chat",
        headers={"Authorization": f"Bearer {reader}"},
        json={"model": "demo-a", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404


def test_guardianctl_load_shows_progress(guardian_factory):
    g = guardian_factory()
    r = g.ctl("load", "demo-a", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "READY"
    assert "loading demo-a" in r.stderr  # the bar goes to stderr with --json
    r = g.ctl("load", "no-such-model")
    assert r.returncode != 0 and "not found" in r.stderr


def test_load_bar_never_fills_before_ready():
    from guardian_supervisor.ctl.models import expected_load_s, load_fraction

    assert load_fraction(0.5, 1.0) == 0.5
    assert load_fraction(10.0, 1.0) == 0.95
    assert expected_load_s({"load_s": 3.0}) == 3.0 and expected_load_s(None) == 2.0


def test_grafana_example_uses_only_exported_families(guardian_factory):
    import re
    from pathlib import Path

    g = guardian_factory()
    text = httpx.get(g.url + "/metrics", timeout=10).text
    exported = {re.sub(r"_total$", "", n) for n in re.findall(r"^# TYPE (guardian_\w+) ", text, re.M)}
    dash = json.loads((Path(__file__).parents[2] / "etc" / "grafana-dashboard.json").read_text())
    used = {
        re.sub(r"_(bucket|total|sum|count)$", "", name)
        for p in dash["panels"]
        for t in p["targets"]
        for name in re.findall(r"guardian_\w+", t["expr"])
    }
    assert used and used <= exported, used - exported
