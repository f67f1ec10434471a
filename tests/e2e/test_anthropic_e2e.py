"""The Anthropic Messages API and current-Ollama bits end to end: the real anthropic, openai
and ollama clients against Guardian on a real upstream llama-server, with the real Gemma 3
270M model (text matters) and a tiny demo model (only shapes matter)."""

from __future__ import annotations

import time
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.harness import ROOT, Guardian

pytestmark = pytest.mark.timeout(180)

GEMMA = ROOT / "data" / "models" / "gemma-3-270m-q4_k_m.gguf"
GREEDY = {"temperature": 0}  # this SDK version has no temperature argument
LONG = "Guardian keeps models loaded and answers in many dialects. " * 6


@pytest.fixture(scope="module")
def g(tmp_path_factory, model_dir, llama_bin):
    if not GEMMA.exists():
        pytest.skip(f"{GEMMA} is missing: run 'make models'")
    models = {
        "gemma3:270m-upstream": {"path": str(GEMMA), "context": 2048, "chat_template": "gemma"},
        "demo-a": {"path": str(Path(model_dir) / "demo-a.gguf"), "context": 2048},
        "demo-small": {"path": str(Path(model_dir) / "demo-a.gguf"), "context": 512},
    }
    guardian = Guardian(tmp_path_factory.mktemp("anthropic"), models, {"proxy": {"ollama_version": "0.35.2"}})
    guardian.start()
    yield guardian
    guardian.close()


@pytest.fixture
def client(g):
    return anthropic.Anthropic(base_url=g.url, api_key="unused", max_retries=0, timeout=120)


def test_messages_create_with_the_real_model(client):
    msg = client.messages.create(
        model="gemma3:270m-upstream",
        max_tokens=24,
        extra_body=GREEDY,
        system="You answer in one short sentence.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content[0].type == "text" and msg.content[0].text.strip()
    # (Gemma 3 270M here is the base model: it continues text rather than answering.)
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) > 10
    assert 0 < msg.usage.output_tokens <= 24


def test_messages_stream_and_beta_client(client):
    with client.messages.stream(
        model="gemma3:270m-upstream",
        max_tokens=16,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": "Count from one to five."}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].type == "text" and final.content[0].text.strip()
    assert final.usage.output_tokens > 0
    # The SDK's beta namespace posts to /v1/messages?beta=true.
    beta = client.beta.messages.create(
        model="demo-a", max_tokens=4, messages=[{"role": "user", "content": "x"}], extra_body=GREEDY
    )
    assert beta.type == "message" and beta.usage.output_tokens > 0


def test_count_tokens_matches_what_generation_reports(client):
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    counted = client.messages.count_tokens(
        model="gemma3:270m-upstream", system="Be brief.", messages=messages
    )
    msg = client.messages.create(
        model="gemma3:270m-upstream", max_tokens=1, system="Be brief.", messages=messages, extra_body=GREEDY
    )
    used = msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0)
    assert counted.input_tokens == used


def test_repeated_prompt_reports_cached_tokens_on_every_api(g, client):
    messages = [{"role": "user", "content": LONG}]
    client.messages.create(model="demo-a", max_tokens=2, messages=messages, extra_body=GREEDY)
    again = client.messages.create(model="demo-a", max_tokens=2, messages=messages, extra_body=GREEDY)
    total = again.usage.input_tokens + again.usage.cache_read_input_tokens
    assert again.usage.cache_read_input_tokens > total // 2  # most of the prompt came from the cache

    oai = openai.OpenAI(base_url=g.url + "/v1", api_key="unused")
    chat = [{"role": "user", "content": LONG}]
    oai.chat.completions.create(model="demo-a", messages=chat, max_tokens=2, temperature=0)
    r = oai.chat.completions.create(model="demo-a", messages=chat, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens > r.usage.prompt_tokens // 2
    chunks = list(
        oai.chat.completions.create(
            model="demo-a",
            messages=chat,
            max_tokens=2,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens > usage.prompt_tokens // 2

    api = ollama.Client(host=g.url)
    api.chat("demo-a", messages=chat, options={"temperature": 0, "num_predict": 2})
    raw = httpx.post(
        g.url + "/api/chat",
        json={
            "model": "demo-a",
            "messages": chat,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 2},
        },
        timeout=60,
    ).json()
    assert raw["prompt_eval_cached_count"] > raw["prompt_eval_count"] // 2


def test_reasoning_effort_is_accepted_on_v1_and_checked(g):
    oai = openai.OpenAI(base_url=g.url + "/v1", api_key="unused")
    r = oai.chat.completions.create(
        model="demo-a", messages=[{"role": "user", "content": "x"}], max_tokens=2, reasoning_effort="none"
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(
            model="demo-a",
            messages=[{"role": "user", "content": "x"}],
            max_tokens=2,
            extra_body={"reasoning_effort": "huge"},
        )
    assert "invalid reasoning effort" in str(e.value)


def test_truncate_drops_old_turns_to_fit_and_false_refuses(g):
    """demo-small runs with 512 tokens of context (the demo tokenizer is bytes): a long history
    only fits with old turns dropped."""
    history = []
    for i in range(8):
        history += [{"role": "user", "content": f"turn {i}: {LONG}"}, {"role": "assistant", "content": "ok"}]
    history.append({"role": "user", "content": "last"})
    api = ollama.Client(host=g.url)
    r = api.chat("demo-small", messages=history, options={"temperature": 0, "num_predict": 2})
    assert r.done and r.prompt_eval_count < 512
    with pytest.raises(ollama.ResponseError) as e:
        httpx_request = {"model": "demo-small", "messages": history, "stream": False, "truncate": False}
        resp = httpx.post(g.url + "/api/chat", json=httpx_request, timeout=60)
        raise ollama.ResponseError(resp.json()["error"], resp.status_code)
    assert e.value.status_code == 400 and "longer than the context length" in e.value.error


def test_errors_are_in_anthropic_shape(g, client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(
            model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e2:
        client.messages.create(model="demo-a", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert "max_tokens" in e2.value.body["error"]["message"]


def test_version_and_status(g):
    assert httpx.get(g.url + "/api/version").json() == {"version": "0.35.2"}  # from settings
    assert httpx.get(g.url + "/api/status").json() == {"cloud": {"disabled": True, "source": "config"}}


def test_keys_work_as_x_api_key_and_bearer(g, client):
    key = g.ctl("keys", "create", "claude").stdout.strip()
    try:
        deadline = time.monotonic() + 5
        while httpx.post(g.url + "/v1/messages", json={}).status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(anthropic.AuthenticationError) as e:
            client.messages.create(model="demo-a", max_tokens=2, messages=[{"role": "user", "content": "x"}])
        assert e.value.body["error"]["type"] == "authentication_error"
        for c in (
            anthropic.Anthropic(base_url=g.url, api_key=key, max_retries=0),  # x-api-key
            anthropic.Anthropic(base_url=g.url, auth_token=key, max_retries=0),  # Authorization: Bearer
        ):
            msg = c.messages.create(model="demo-a", max_tokens=2, messages=[{"role": "user", "content": "x"}])
            assert msg.usage.output_tokens > 0
    finally:
        g.ctl("keys", "revoke", "claude")
