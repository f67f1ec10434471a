"""proxy.loading_progress: a streamed request that waits for its model to load gets progress
(reasoning_content on /v1, thinking on /api/chat) instead of silence; off by default."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from tests.harness import Guardian, write_fake_config

pytestmark = pytest.mark.timeout(120)


def start(root, model_dir, progress: bool | None) -> Guardian:
    root.mkdir(parents=True)
    cfg = root / "fake.json"
    write_fake_config(cfg, {"load_delay_s": 2.5, "content": ["Hi", "!"]})
    models = {"slow": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512}}
    settings = {"proxy": {"loading_progress": progress}} if progress is not None else None
    g = Guardian(root, models, settings, env={"FAKE_LLAMA_CONFIG": str(cfg)})
    g.start()
    return g


def v1_stream(g: Guardian) -> list[dict]:
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(timeout=60) as h, h.stream("POST", g.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return [
            json.loads(line[5:])
            for line in r.iter_lines()
            if line.startswith("data:") and line[5:].strip() != "[DONE]"
        ]


def test_progress_while_loading(tmp_path, model_dir, llama_bin):
    g = start(tmp_path / "on", model_dir, True)
    try:
        chunks = v1_stream(g)
        reasoning = [c["choices"][0]["delta"].get("reasoning_content") for c in chunks if c.get("choices")]
        loading = [r for r in reasoning if r and r.startswith("Loading model 'slow'")]
        assert len(loading) >= 2  # one a second during a 2.5 s load
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        assert content == "Hi!"  # then the answer, on the same stream

        g.rpc("models.unload", {"model": "slow"})
        parts = list(
            ollama.Client(host=g.url).chat("slow", messages=[{"role": "user", "content": "x"}], stream=True)
        )
        thinking = [p.message.thinking for p in parts if p.message.thinking]
        assert thinking and thinking[0].startswith("Loading model 'slow'")
        assert "".join(p.message.content or "" for p in parts) == "Hi!" and parts[-1].done
    finally:
        g.close()


def test_off_by_default(tmp_path, model_dir, llama_bin):
    g = start(tmp_path / "off", model_dir, None)
    try:
        chunks = v1_stream(g)
        assert not any(c["choices"][0]["delta"].get("reasoning_content") for c in chunks if c.get("choices"))
    finally:
        g.close()


def test_progress_on_anthropic_messages(tmp_path, model_dir, llama_bin):
    import anthropic

    g = start(tmp_path / "anthropic", model_dir, True)
    try:
        client = anthropic.Anthropic(base_url=g.url, api_key="unused", max_retries=0)
        with client.messages.stream(
            model="slow", max_tokens=16, messages=[{"role": "user", "content": "x"}]
        ) as s:
            kinds = [e.type for e in s]
            final = s.get_final_message()
        assert kinds[0] == "message_start" and kinds.count("message_start") == 1
        thinking, text = final.content[0], final.content[-1]
        assert thinking.type == "thinking" and thinking.thinking.startswith("Loading model 'slow'")
        assert thinking.thinking.count("Loading model") >= 2  # one a second during a 2.5 s load
        assert text.type == "text" and text.text == "Hi!"  # the answer continues the same message
    finally:
        g.close()
