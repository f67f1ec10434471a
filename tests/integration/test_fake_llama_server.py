"""The fake llama-server itself, run as a subprocess through its executable wrapper.

These pin the behaviour other integration tests rely on: readiness in both flavors, the exact
stream shapes, and the faults (crash mid-stream, ignored SIGTERM, rejected flags).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.fake_llama_server import FAKE_BINARY, fake_env, free_port, read_records, write_config

# Every flag the brief lists, valued and bare, so a parse slip shows up as a failed start.
MANY_FLAGS = [
    "-c", "4096", "-ngl", "99", "-fa", "on", "--jinja", "--metrics", "--embeddings",
    "-ts", "0.5,0.5", "-lv", "4", "-n", "-1", "-ot", "blk\\..*=CPU", "--no-mmap", "-fa",
]  # fmt: skip


@dataclass
class Fake:
    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path
    record: Path
    config: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    async def wait_for(self, needle: str, *, stream: str = "stderr", limit_s: float = 5.0) -> None:
        deadline = time.monotonic() + limit_s
        while needle not in (self.stderr() if stream == "stderr" else self.stdout()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in {stream}:\n{self.stdout()}\n{self.stderr()}")
            await asyncio.sleep(0.02)

    async def wait_exit(self, limit_s: float = 5.0) -> int:
        return await asyncio.to_thread(self.proc.wait, limit_s)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def _start(config: dict[str, Any] | None = None, *args: str, alias: str = "m1") -> Fake:
        n = len(procs)
        cfg_path, rec = tmp_path / f"cfg{n}.json", tmp_path / f"rec{n}.jsonl"
        write_config(cfg_path, {"default": {}, "models": {alias: config or {}}})
        out, err = tmp_path / f"out{n}.txt", tmp_path / f"err{n}.txt"
        port = free_port()
        argv = [str(FAKE_BINARY), "-m", str(tmp_path / "model.gguf"), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--alias", alias, *args]
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(argv, stdout=fo, stderr=fe, env=fake_env(cfg_path, rec))
        procs.append(proc)
        return Fake(proc, port, out, err, rec, cfg_path)

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def ready(fake: Fake, limit_s: float = 5.0) -> None:
    """Poll /health like Guardian does: short timeouts, until 200."""
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(fake.url("/health"), timeout=aiohttp.ClientTimeout(total=0.3)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            assert fake.proc.poll() is None, fake.stderr()
            await asyncio.sleep(0.02)
    raise AssertionError("fake never became ready")


async def sse_events(resp: aiohttp.ClientResponse) -> list[Any]:
    """The data: payloads of an SSE body, parsed; "[DONE]" kept as a string."""
    events: list[Any] = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_upstream_readiness_503_then_listening_and_sigterm(start: Any) -> None:
    fake = start(
        {"load_delay_s": 0.8, "buffers_mib": {"model": 10.5, "kv": {"CUDA0": 64, "CUDA1": 32}}},
        *MANY_FLAGS,
        "-fmoe",
    )
    async with aiohttp.ClientSession() as s:
        deadline = time.monotonic() + 5
        while True:  # HTTP is up before the model: the first answer is the loading 503
            try:
                async with s.get(fake.url("/health")) as r:
                    assert r.status == 503
                    assert r.headers["Server"] == "llama.cpp"
                    assert await r.json() == {
                        "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
                    }
                    break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        async with s.post(fake.url("/v1/chat/completions"), json={"messages": []}) as r:
            assert r.status == 503  # every route but the model list
        async with s.get(fake.url("/v1/models")) as r:
            assert r.status == 200 and (await r.json())["data"][0]["id"] == "m1"
        assert "listening on" not in fake.stderr()
        await fake.wait_for(f"server is listening on http://127.0.0.1:{fake.port}")
        async with s.get(fake.url("/health")) as r:
            assert r.status == 200 and await r.json() == {"status": "ok"}
        async with s.get(fake.url("/props")) as r:
            props = await r.json()
            assert props["default_generation_settings"]["n_ctx"] == 4096
            assert props["total_slots"] == 1 and props["model_path"].endswith("model.gguf")

    err = fake.stderr()
    order = [err.index(x) for x in ("srv  llama_server: loading model", "model loaded", "listening on")]
    assert order == sorted(order)
    assert "load_tensors:          CPU model buffer size =    10.50 MiB" in err
    assert "llama_kv_cache:      CUDA0 KV buffer size =    64.00 MiB" in err
    assert "llama_kv_cache:      CUDA1 KV buffer size =    32.00 MiB" in err
    assert "sched_reserve:        CPU compute buffer size =     3.00 MiB" in err
    assert fake.stdout() == ""  # upstream logs only to stderr

    fake.proc.send_signal(signal.SIGTERM)
    assert await fake.wait_exit() == 0
    assert "cleaning up before exit" in fake.stderr()


async def test_sigterm_while_loading_kills_at_once(start: Any) -> None:
    fake = start({"hang_forever_loading": True})
    await fake.wait_for("loading model")
    fake.proc.send_signal(signal.SIGTERM)
    assert await fake.wait_exit() == -signal.SIGTERM


async def test_load_fail_exits_1(start: Any) -> None:
    fake = start({"load_fail": True})
    assert await fake.wait_exit() == 1
    assert "exiting due to model loading error" in fake.stderr()


async def test_ik_health_hangs_while_loading_then_ok(start: Any) -> None:
    fake = start({"flavor": "ik", "load_delay_s": 1.2}, "-c", "2048")
    deadline = time.monotonic() + 5
    while True:  # TCP connect succeeds as soon as the socket is bound...
        try:
            socket.create_connection(("127.0.0.1", fake.port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    async with aiohttp.ClientSession() as s:
        early = asyncio.create_task(s.get(fake.url("/health"), timeout=aiohttp.ClientTimeout(total=5)))
        with pytest.raises(TimeoutError):  # ...but HTTP gets no answer until loaded
            async with s.get(fake.url("/health"), timeout=aiohttp.ClientTimeout(total=0.3)):
                pass
        assert "HTTP server listening" not in fake.stdout()
        await fake.wait_for("HTTP server listening", stream="stdout")
        async with await early as r:  # the request queued during the load is answered now
            assert r.status == 200
            assert r.headers["Server"] == "ik_llama.cpp"
            assert await r.json() == {"status": "ok", "slots_idle": 1, "slots_processing": 0}
        body = {"messages": [{"role": "user", "content": "hello"}]}
        async with s.post(fake.url("/v1/chat/completions"), json=body) as r:
            timings = (await r.json())["timings"]
        assert "cache_n" not in timings and timings["n_ctx"] == 2048 and "n_past" in timings
        async with s.get(fake.url("/models")) as r:
            assert r.status == 404  # ik has only /v1/models

    out = fake.stdout()
    assert out.index("model loaded") < out.index("HTTP server listening")
    assert f'hostname="127.0.0.1" port="{fake.port}" n_threads_http="3"' in out
    assert "llm_load_tensors:        CPU buffer size =     1.00 MiB" in fake.stderr()
    assert "llama_new_context_with_model:        CPU compute buffer size =     3.00 MiB" in fake.stderr()


async def test_ik_rejects_fmoe(start: Any) -> None:
    fake = start({"flavor": "ik"}, "-ngl", "99", "-fmoe", "-c", "4096")
    assert await fake.wait_exit() == 1
    assert "error: unknown argument: -fmoe" in fake.stderr()


async def test_stream_chat_reasoning_and_tool_calls(start: Any) -> None:
    timings = {"prompt_n": 11, "prompt_ms": 12.5, "predicted_n": 7, "predicted_ms": 70.0, "cache_n": 3}
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}, "id": "call_abc"},
        {"name": "noop", "arguments": {}},
    ]
    fake = start({"reasoning": ["Let", " me", " think"], "tool_calls": calls, "timings": timings})
    await ready(fake)
    body = {
        "messages": [{"role": "user", "content": "weather?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s, s.post(fake.url("/v1/chat/completions"), json=body) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = await sse_events(r)

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-2]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think"
    assert not any("content" in d for d in deltas)  # tool_calls given, content not: none
    args: dict[int, str] = {}
    heads = {}
    for d in deltas:
        for tc in d.get("tool_calls", []):
            if "id" in tc:  # the first delta of a call names it
                assert tc["type"] == "function" and tc["function"]["arguments"] == ""
                heads[tc["index"]] = (tc["id"], tc["function"]["name"])
            args[tc["index"]] = args.get(tc["index"], "") + tc["function"]["arguments"]
    assert heads[0] == ("call_abc", "get_weather") and heads[1][1] == "noop" and len(heads[1][0]) == 32
    assert sum(1 for d in deltas for _ in d.get("tool_calls", [])) > 4  # many small pieces
    assert json.loads(args[0]) == {"city": "Paris", "unit": "C"} and json.loads(args[1]) == {}
    finish = chunks[-2]
    assert finish["choices"] == [{"finish_reason": "tool_calls", "index": 0, "delta": {}}]
    assert "timings" not in finish
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"completion_tokens": 7, "prompt_tokens": 14, "total_tokens": 21}
    assert {k: usage_chunk["timings"][k] for k in timings} == timings


async def test_crash_mid_stream(start: Any) -> None:
    fake = start({"content": ["a", "b", "c", "d", "e"], "crash_mid_stream_after": 2, "token_delay_s": 0.02})
    await ready(fake)
    seen: list[Any] = []
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    async with aiohttp.ClientSession() as s, s.post(fake.url("/v1/chat/completions"), json=body) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):  # the chunked body never completes
            async for raw in r.content:
                if raw.startswith(b"data: "):
                    seen.append(raw[6:].strip())
    deltas = [json.loads(x)["choices"][0]["delta"] for x in seen]
    assert deltas == [{"role": "assistant", "content": None}, {"content": "a"}, {"content": "b"}]
    assert await fake.wait_exit() == 1


async def test_ignore_sigterm_needs_sigkill(start: Any) -> None:
    fake = start({"ignore_sigterm": True})
    await ready(fake)
    fake.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.4)
    assert fake.proc.poll() is None
    await ready(fake)  # still serving
    fake.proc.send_signal(signal.SIGKILL)
    assert await fake.wait_exit() == -signal.SIGKILL


async def test_record_file_and_request_options(start: Any, tmp_path: Path) -> None:
    slots_dir = tmp_path / "slots"
    fake = start({"content": ["one", " two", " three", " four"]}, "--slot-save-path", str(slots_dir))
    await ready(fake)
    chat = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(fake.url("/v1/chat/completions"), json=chat) as r:
            out = await r.json()
        assert out["choices"][0]["message"]["content"] == "one two"
        assert out["choices"][0]["finish_reason"] == "length"

        async with s.post(fake.url("/completion"), json={"prompt": "p", "stop": [" thr"]}) as r:
            native = await r.json()
        assert native["content"] == "one two" and native["stop_type"] == "word"

        # Behaviour follows the config file, re-read per request.
        write_config(fake.config, {"default": {"content": ["changed"]}})
        async with s.post(fake.url("/v1/completions"), json={"prompt": "p"}) as r:
            assert (await r.json())["choices"][0]["text"] == "changed"

        bad = {
            "messages": [
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
            ]
        }
        async with s.post(fake.url("/v1/chat/completions"), json=bad) as r:
            assert r.status == 500
            assert "Missing tool call type" in (await r.json())["error"]["message"]

        async with s.post(fake.url("/v1/embeddings"), json={"input": "x"}) as r:
            assert r.status == 501  # not started with --embeddings

        async with s.post(fake.url("/slots/0?action=save"), json={"filename": "../evil.bin"}) as r:
            assert r.status == 400
        async with s.post(fake.url("/slots/0?action=save"), json={"filename": "s.bin"}) as r:
            assert r.status == 200 and (slots_dir / "s.bin").exists()

    records = read_records(fake.record)
    assert records[0]["event"] == "start" and "--slot-save-path" in records[0]["argv"]
    posted = [r for r in records if r.get("path") == "/v1/chat/completions"]
    assert posted[0] == {
        "alias": "m1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query": {},
        "body": chat,
    }
    assert any(r.get("query") == {"action": "save"} for r in records)
