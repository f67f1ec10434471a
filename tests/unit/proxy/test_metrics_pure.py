"""The pure parts of /metrics: stop reasons, histograms, request summaries, the collector."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guardian_proxy import metrics as pm
from guardian_supervisor.metrics import Histogram, stop_reason_kind


def test_stop_reasons_are_a_closed_set():
    assert stop_reason_kind("evicted for demo-b") == "evicted"
    assert stop_reason_kind("idle (keep_alive expired)") == "idle"
    assert stop_reason_kind("unload requested") == "unload"
    assert stop_reason_kind("benchmark: relaunch at context 4096") == "benchmark"
    assert stop_reason_kind("configuration changed") == "config"
    assert stop_reason_kind("removed from models.yaml") == "config"
    assert stop_reason_kind("supervisor shutting down") == "shutdown"
    assert stop_reason_kind("something new") == "other"


def test_histogram_is_cumulative_with_inf_as_count():
    h = Histogram((1.0, 5.0))
    for v in (0.5, 2.0, 2.5, 100.0):
        h.observe(v)
    d = h.to_dict()
    assert d["cumulative"] == [1, 3] and d["count"] == 4 and d["sum"] == 105.0


def test_usage_from_the_sse_tail_and_summary():
    s = pm.RequestStats(t0=10.0)
    token = pm.CURRENT.set(s)
    try:
        final = {
            "choices": [],
            "timings": {
                "prompt_n": 7,
                "cache_n": 3,
                "predicted_n": 20,
                "prompt_ms": 5.0,
                "predicted_ms": 100.0,
            },
        }
        tail = (
            b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: '
            + json.dumps(final).encode()
            + b"\n\ndata: [DONE]\n\n"
        )
        pm.note_usage_in_sse_tail(tail)
    finally:
        pm.CURRENT.reset(token)
    assert (s.prompt_tokens, s.generated_tokens, s.cached_tokens) == (10, 20, 3)
    s.first_byte = 10.5
    f = pm.summarize(s, "/v1/chat/completions", 200, 12.0)
    assert f.duration_s == 2.0 and f.ttft_s == 0.5 and f.tokens_per_s == 200.0
    # Not streamed: TTFT is the wait plus llama-server's prompt time.
    u = pm.RequestStats(t0=0.0, acquire_s=0.25, prompt_ms=50.0)
    assert pm.summarize(u, "/api/chat", 200, 1.0).ttft_s == 0.3


def test_usage_falls_back_to_openai_usage():
    s = pm.RequestStats(t0=0.0)
    token = pm.CURRENT.set(s)
    try:
        pm.note_usage({"usage": {"prompt_tokens": 4, "completion_tokens": 9}})
    finally:
        pm.CURRENT.reset(token)
    assert (s.prompt_tokens, s.generated_tokens) == (4, 9)


def test_collector_turns_a_snapshot_into_families():
    c = pm.SupervisorCollector()
    c.snapshot = {
        "states": ["STOPPED", "READY"],
        "models": [
            {
                "name": "m",
                "state": "READY",
                "inflight": 2,
                "queued": 3,
                "loads": 1,
                "load_seconds": {"buckets": [1.0, 5.0], "cumulative": [0, 1], "sum": 2.0, "count": 1},
            }
        ],
        "queued": 3,
        "stops": [{"model": "m", "reason": "evicted", "count": 2}],
        "session_saves": [],
        "memory": {
            "gpus": [
                {
                    "index": 0,
                    "name": "g",
                    "total_mib": 100,
                    "free_mib": 40,
                    "other_mib": 10,
                    "models": {"m": 50},
                }
            ],
            "placements": {"m": {"estimate_mib": 50, "measured_mib": 48}},
        },
        "bench": {
            "done": 1,
            "total": 4,
            "cells": {"ok": 1},
            "best": [{"model": "m", "metric": "gen_tps", "value": 99.0}],
        },
    }
    reg = CollectorRegistry()
    reg.register(c)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(generate_latest(reg).decode())
        for s in fam.samples
    }
    assert samples[("guardian_model_state", (("model", "m"), ("state", "READY")))] == 1
    assert samples[("guardian_model_state", (("model", "m"), ("state", "STOPPED")))] == 0
    assert samples[("guardian_queue_depth", (("model", "m"),))] == 3
    assert samples[("guardian_model_load_seconds_bucket", (("le", "+Inf"), ("model", "m")))] == 1
    assert samples[("guardian_model_evictions_total", (("model", "m"),))] == 2
    assert samples[("guardian_gpu_memory_model_bytes", (("gpu", "0"), ("model", "m")))] == 50 * 2**20
    assert samples[("guardian_benchmark_progress_ratio", ())] == 0.25
    assert samples[("guardian_supervisor_up", ())] == 1


def test_usage_from_the_tail_of_a_whole_json_answer():
    s = pm.RequestStats(t0=0.0)
    token = pm.CURRENT.set(s)
    try:
        body = json.dumps(
            {
                "choices": [{"message": {"content": "hi"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2},
                "timings": {"prompt_n": 5, "predicted_n": 2, "predicted_ms": 4.0},
            }
        ).encode()
        pm.note_usage_in_json_tail(body)
        assert (s.prompt_tokens, s.generated_tokens) == (5, 2)
        e = pm.RequestStats(t0=0.0)
        pm.CURRENT.set(e)
        pm.note_usage_in_json_tail(
            b'{"data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":3,"total_tokens":3}}'
        )
        assert e.prompt_tokens == 3
        pm.note_usage_in_json_tail(b'{"broken": "usage":')  # no crash on junk
    finally:
        pm.CURRENT.reset(token)
