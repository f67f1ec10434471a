"""The queue is visible: per model, how many wait and for how long (status, ctl, /api/ps)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.harness import write_fake_config

pytestmark = pytest.mark.timeout(120)


def test_waiting_requests_show_in_status_ctl_and_ps(guardian_factory, model_dir, tmp_path):
    cfg = tmp_path / "fake.json"
    write_fake_config(cfg, {"load_delay_s": 3.0})
    g = guardian_factory(
        {"fa": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512}},
        env={"FAKE_LLAMA_CONFIG": str(cfg)},
    )
    body = {"model": "fa", "messages": [{"role": "user", "content": "hi"}]}
    answers: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(
                httpx.post(g.url + "/v1/chat/completions", json=body, timeout=60).status_code
            )
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while g.model("fa").get("queued") != 3:
        assert time.monotonic() < deadline, g.model("fa")
        time.sleep(0.05)
    time.sleep(0.5)
    m = g.model("fa")
    assert m["state"] == "STARTING" and m["oldest_wait_s"] >= 0.5
    ps = httpx.get(g.url + "/api/ps").json()
    assert ps["queue"] == [
        {"model": "fa:latest", "queued": 3, "oldest_wait_s": ps["queue"][0]["oldest_wait_s"]}
    ]
    assert ps["queue"][0]["oldest_wait_s"] >= 0.5
    assert [e["queued"] for e in ps["models"]] == [3]  # a loading model is listed, as Ollama does
    out = g.ctl("status")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("fa "))
    assert row.split()[1:2] == ["STARTING"] and " 3 " in row, row
    for t in threads:
        t.join()
    assert answers == [200, 200, 200]
    assert g.model("fa")["queued"] == 0 and httpx.get(g.url + "/api/ps").json()["queue"] == []
