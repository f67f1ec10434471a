"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): it shows the
models, follows a load without a reload (SSE), and its buttons act only with a key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            "Debian's chromium is not installed and could not be (make test installs it: apt-get install -y chromium)"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the 'playwright' package is in the test extra"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def card(page, model: str):
    return page.locator(f'article.model[data-model="{model}"]')


def test_dashboard_live_and_actions(guardian_factory, browser, tmp_path: Path):
    # Two simulated GPUs (4 GiB, some held by "other processes"): the page draws per-GPU bars.
    gpus = [
        {"name": "sim0", "total_mb": 4096, "used_mb": 900},
        {"name": "sim1", "total_mb": 4096, "used_mb": 0},
    ]
    g = guardian_factory(settings={"gpus": {"mode": "simulated", "simulated": gpus}})
    ui = f"http://127.0.0.1:{g.settings['proxy']['ui_port']}"
    key = g.ctl("keys", "create", "admin").stdout.strip()
    assert key.startswith("flip_")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(ui + "/")
    page.wait_for_selector("#live.on", timeout=10_000)  # the event stream is open
    assert card(page, "demo-a").get_attribute("data-state") == "STOPPED"
    assert card(page, "demo-b").count() == 1
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded

    # A load from elsewhere (guardianctl) shows up by itself.
    g.rpc("models.load", {"model": "demo-a"})
    page.wait_for_selector('article.model[data-model="demo-a"][data-state="READY"]', timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    assert "GPU 0" in card(page, "demo-a").inner_text() or "GPU 1" in card(page, "demo-a").inner_text()
    assert page.locator("#memory .gpu").count() == 2
    assert page.locator('#memory .bar span[title^="demo-a"]').count() == 1

    # Requests through the API appear in the recent list with their speed.
    for _ in range(2):
        r = httpx.post(
            g.url + "/api/generate",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "demo-a", "prompt": "hi", "options": {"num_predict": 8}},
            timeout=30,
        )
        assert r.status_code == 200
    page.wait_for_function("document.querySelectorAll('#recent tbody tr').length >= 2", timeout=10_000)
    assert "/api/generate" in page.inner_text("#recent")

    # Unload without a key is refused and the model stays up.
    card(page, "demo-a").locator('button[data-action="unload"]').click()
    page.wait_for_selector("#notice.FAILED", timeout=5_000)
    assert "API key" in page.inner_text("#notice")
    assert g.model("demo-a")["state"] == "READY"

    # With the key it works, and the page follows.
    page.fill("#key", key)
    page.dispatch_event("#key", "change")
    card(page, "demo-a").locator('button[data-action="unload"]').click()
    page.wait_for_selector('article.model[data-model="demo-a"][data-state="STOPPED"]', timeout=15_000)
    assert g.model("demo-a")["state"] == "STOPPED"

    # Load and pin by button.
    card(page, "demo-b").locator('button[data-action="load"]').click()
    page.wait_for_selector('article.model[data-model="demo-b"][data-state="READY"]', timeout=15_000)
    card(page, "demo-b").locator('button[data-action="pin"]').click()
    page.wait_for_selector('article.model[data-model="demo-b"] button[data-action="unpin"]', timeout=5_000)
    assert g.model("demo-b")["pinned"] is True
    assert page.evaluate("window.__sameDocument") is True

    shot = Path(os.environ.get("GUARDIAN_DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # A phone: everything fits the width, no sideways scrolling.
    phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    phone.goto(ui + "/")
    phone.wait_for_selector('article.model[data-model="demo-b"][data-state="READY"]', timeout=10_000)
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_dashboard_follows_a_benchmark_run(guardian_factory, browser):
    bench = {
        "contexts": [256, 512],
        "batch_sizes": [64, 128],
        "ubatch_sizes": [64],
        "prompt_tokens": 32,
        "gen_tokens": 8,
        "repetitions": 1,
        "idle_minutes": 0.01,
    }
    g = guardian_factory(settings={"benchmark": bench, "maintenance": {"enabled": False}})
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"http://127.0.0.1:{g.settings['proxy']['ui_port']}/")
    page.wait_for_selector("#live.on", timeout=10_000)
    assert "no benchmark run yet" in page.inner_text("#bench")
    g.rpc("bench.run", {"models": ["demo-a"]})
    page.wait_for_selector("#bench-run progress", timeout=20_000)  # shown while it runs
    page.wait_for_function(
        "document.querySelector('#bench-run') && /finished, (\\d+)\\/\\1 cells/.test(document.querySelector('#bench-run').textContent)",
        timeout=90_000,
    )
    assert page.locator("#bench svg rect").count() == 1  # demo-a's best generation speed
    assert "t/s" in (page.locator("#bench svg").text_content() or "")
