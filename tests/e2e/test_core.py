"""Issue 2 end to end: a real llama-server, real processes, real sockets, the openai client."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx
import openai
import psutil
import pytest

pytestmark = pytest.mark.timeout(180)


def stream_chat(url: str, model: str, max_tokens: int = 4) -> tuple[str, list[str]]:
    """Stream a chat completion; return the model named in the chunks and the content pieces."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    names, pieces = set(), []
    for chunk in client.chat.completions.create(
        # "x" at temperature 0: the random-weight model answers it with tokens, never EOS first.
        model=model,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=max_tokens,
        stream=True,
        temperature=0,
    ):
        names.add(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert len(names) == 1, names
    return names.pop(), pieces


ONE = {"max_loaded_models": 1}  # the brief's one-model-at-a-time switching


def test_a_then_b_then_a(guardian_factory):
    g = guardian_factory(settings=ONE)
    seen = []
    for model in ("demo-a", "demo-b", "demo-a"):
        name, pieces = stream_chat(g.url, model)
        assert name == model
        assert pieces, "the stream carried no content"
        st = {m["name"]: m for m in g.status()["models"]}
        assert st[model]["state"] == "READY"
        other = "demo-b" if model == "demo-a" else "demo-a"
        assert st[other]["state"] == "STOPPED", "only one model is resident at a time"
        assert st[model]["pid"] and psutil.pid_exists(st[model]["pid"])
        argv = st[model]["argv"]
        assert argv[argv.index("--port") + 1] == str(st[model]["port"])
        assert "--host" in argv and argv[argv.index("--host") + 1] == "127.0.0.1"
        seen.append(st[model]["pid"])
    assert len(set(seen)) == 3, "each switch started a fresh server"
    assert not psutil.pid_exists(seen[0]) and not psutil.pid_exists(seen[1])
    log = (g.root / "data" / "logs" / "demo-a.log").read_text()
    assert "listening on" in log and log.count(" start: ") == 2 and log.count("exited with status 0") == 1


def test_hundred_requests_two_models_eight_clients(guardian_factory):
    g = guardian_factory(settings=ONE)
    models = ["demo-a", "demo-b"]
    resident_max = 0
    stop = threading.Event()

    def watch() -> None:  # sample: never two servers resident at once
        nonlocal resident_max
        while not stop.is_set():
            st = g.status()["models"]
            resident_max = max(resident_max, sum(m["state"] in ("STARTING", "READY", "STOPPING") for m in st))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()

    async def run() -> list[tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=g.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for i in range(100):
            queue.put_nowait(models[(i * 7 + i // 3) % 2])
        results: list[tuple[str, str]] = []

        async def worker() -> None:
            while not queue.empty():
                want = queue.get_nowait()
                r = await client.chat.completions.create(
                    model=want, messages=[{"role": "user", "content": "hi"}], max_tokens=3
                )
                results.append((want, r.model))

        await asyncio.gather(*(worker() for _ in range(8)))
        await client.close()
        return results

    try:
        results = asyncio.run(run())
    finally:
        stop.set()
        watcher.join()
    assert len(results) == 100
    wrong = [(want, got) for want, got in results if want != got]
    assert not wrong, f"answered by the wrong model: {wrong[:5]}"
    assert {w for w, _ in results} == set(models)
    assert resident_max == 1, f"{resident_max} servers were resident at once"
    st = g.status()
    assert st["leases"] == 0 and st["queued"] == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_no_child_behind(guardian_factory, sig):
    g = guardian_factory()
    stream_chat(g.url, "demo-a")
    pid = g.model("demo-a")["pid"]
    assert psutil.pid_exists(pid)
    g.send("guardian", sig)
    assert g.procs["guardian"].wait(20) == 0
    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=5)
    assert not psutil.pid_exists(pid)
    assert g.child_pids() == []
    assert not g.socket.exists(), "the socket is removed on a clean stop"


def test_unknown_model_is_openai_404(guardian_factory):
    g = guardian_factory()
    r = httpx.post(
        g.url + "/v1/chat/completions",
        json={"model": "no-such", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and "no-such" in err["message"]
    r = httpx.post(g.url + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_models_lists_every_configured_model(guardian_factory):
    g = guardian_factory()
    client = openai.OpenAI(base_url=g.url + "/v1", api_key="unused")
    assert sorted(m.id for m in client.models.list()) == ["demo-a", "demo-b"]


def test_guardianctl_load_status_unload(guardian_factory):
    g = guardian_factory()
    r = g.ctl("load", "demo-b", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "READY"
    st = json.loads(g.ctl("status", "--json").stdout)
    b = next(m for m in st["models"] if m["name"] == "demo-b")
    assert b["state"] == "READY" and b["pid"] and b["argv"][0].endswith("llama-server")
    assert "demo-b" in g.ctl("status").stdout
    r = g.ctl("unload", "--all", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == ["demo-b"]
    assert g.model("demo-b")["state"] == "STOPPED"
    r = g.ctl("load", "nope")
    assert r.returncode == 3 and "model 'nope' not found" in r.stderr


def test_guardianctl_without_supervisor(guardian_factory):
    g = guardian_factory(start=None)
    r = g.ctl("status")
    assert r.returncode != 0
    assert "not running" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_reload_bad_file_keeps_running_config(guardian_factory, model_dir):
    g = guardian_factory()
    (g.config_dir / "models.yaml").write_text("models:\n  demo-a:\n    path: x.gguf\n    contxt: 5\n")
    r = g.ctl("reload")
    assert r.returncode == 7
    assert "models.yaml:4" in r.stderr and "models.demo-a.contxt" in r.stderr and "kept" in r.stderr
    name, _ = stream_chat(g.url, "demo-a")  # still serving with the old configuration
    assert name == "demo-a"
    g.write_config({"demo-c": {"path": str(model_dir / "tiny-c.gguf"), "context": 512}})
    r = g.ctl("reload", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"] == ["demo-c"]
    assert stream_chat(g.url, "demo-c")[0] == "demo-c"


def test_supervisor_refuses_bad_config(guardian_factory):
    g = guardian_factory(start=None)
    (g.config_dir / "settings.yaml").write_text("proxy:\n  port: eleven\n")
    proc = g.start("guardian-supervisor", wait=False)
    assert proc.wait(20) != 0
    out = g.log("guardian-supervisor")
    assert "settings.yaml:2" in out and "proxy.port" in out and "integer" in out
