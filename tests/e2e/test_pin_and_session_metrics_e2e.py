"""models.pin (the dashboard's Pin button) survives a config reload without a restart, and
named-session saves/restores show in /metrics."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(120)


def samples(g) -> dict[tuple, float]:
    text = httpx.get(g.url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_pin_survives_reload_and_sessions_are_counted(guardian_factory):
    g = guardian_factory()
    g.rpc("models.load", {"model": "demo-a"})
    pid = g.model("demo-a")["pid"]
    assert g.rpc("models.pin", {"model": "demo-a"})["pinned"] is True
    assert g.rpc("config.reload")["changed"] == []  # a run-time pin is not a config change
    m = g.model("demo-a")
    assert m["pinned"] is True and m["pid"] == pid and m["expires_at"] is None
    assert samples(g)[("guardian_model_pinned", (("model", "demo-a"),))] == 1
    g.rpc("models.pin", {"model": "demo-a", "pinned": False})
    assert g.model("demo-a")["pinned"] is False

    r = httpx.post(
        g.url + "/v1/chat/completions",
        json={"model": "demo-a", "messages": [{"role": "user", "content": "remember this"}], "max_tokens": 4},
        timeout=30,
    )
    assert r.status_code == 200
    saved = g.rpc("sessions.save", {"name": "s1", "model": "demo-a"})
    assert saved["n_tokens"] > 0
    restored = g.rpc("sessions.restore", {"name": "s1"})
    s = samples(g)
    assert s[("guardian_session_saves_total", (("kind", "named"), ("model", "demo-a")))] == 1
    assert s[("guardian_session_restores_total", (("model", "demo-a"),))] == 1
    assert s[("guardian_session_restored_tokens_total", (("model", "demo-a"),))] == restored["n_restored"]
