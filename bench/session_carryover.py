#!/usr/bin/env python3
"""What carry-over saves: time to first token for a conversation's next turn after a swap.

One Guardian per mode (sessions.carry_over on, then off), max_loaded_models 1, the tiny
demo-b model with a context of 8192 and a first turn of a few thousand tokens. Each
repetition: the first turn on demo-b, a request to demo-a (which swaps demo-b out), then the
follow-up on demo-b, streamed: the same messages plus the answer and a new question. Its time
to first token includes starting demo-b again (and, with carry-over, restoring its slot).
Medians over the repetitions; llama-server's own `timings` (cache_n, prompt_ms) beside them.

Run: .venv/bin/python bench/session_carryover.py [--reps N] [--sentences N]. Prints figures.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardian_supervisor.demo_models import DEMO_MODELS, write_tiny_llama  # noqa: E402
from tests.harness import Guardian  # noqa: E402


def long_prompt(rep: int, sentences: int) -> str:
    # A different opening per repetition, so nothing but the carried slot can hold it.
    return f"conversation {rep}. " + " ".join(f"the world is a hello of {i}." for i in range(sentences))


def chat(c: httpx.Client, url: str, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    r = c.post(url, json={"model": model, "messages": messages, "max_tokens": 4, "temperature": 0})
    r.raise_for_status()
    return r.json()


def streamed(
    c: httpx.Client, url: str, model: str, messages: list[dict[str, Any]]
) -> tuple[float, dict[str, Any]]:
    """(time to the first streamed token, the final timings) of one streamed request."""
    body = {"model": model, "messages": messages, "max_tokens": 4, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first: float | None = None
    timings: dict[str, Any] = {}
    with c.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            first = first or time.perf_counter()
            chunk = json.loads(line[6:])
            timings = chunk.get("timings") or timings
    assert first is not None, "nothing streamed"
    return first - t0, timings


def run_mode(
    root: Path, models: dict[str, Any], carry_over: bool, reps: int, sentences: int
) -> dict[str, float]:
    settings = {
        "logging": {"level": "info"},  # the session_carried / session_restored lines carry their times
        "max_loaded_models": 1,
        "sessions": {"carry_over": carry_over},
    }
    g = Guardian(root / ("on" if carry_over else "off"), models, settings)
    g.start()
    url = g.url + "/v1/chat/completions"
    ttft, cache_n, prompt_ms, first_ms, prompt_n = [], [], [], [], []
    try:
        with httpx.Client(timeout=600) as c:
            chat(c, url, "demo-b", [{"role": "user", "content": "warm up"}])
            for rep in range(reps):
                messages = [{"role": "user", "content": long_prompt(rep, sentences)}]
                t0 = time.perf_counter()
                first = chat(c, url, "demo-b", messages)
                first_ms.append((time.perf_counter() - t0) * 1e3)
                prompt_n.append(first["usage"]["prompt_tokens"])
                chat(c, url, "demo-a", [{"role": "user", "content": "hi"}])  # swaps demo-b out
                assert g.model("demo-b")["state"] == "STOPPED"
                messages += [
                    {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                    {"role": "user", "content": "and then?"},
                ]
                t, timings = streamed(c, url, "demo-b", messages)
                ttft.append(t * 1e3)
                cache_n.append(timings.get("cache_n", 0))
                prompt_ms.append(timings.get("prompt_ms", 0.0))
        log = g.log()
    finally:
        g.close()
    saves = [float(x) for x in re.findall(r"session_carried +bytes=\d+ model=demo-b .*?ms=([\d.]+)", log)]
    restores = [
        float(x) for x in re.findall(r"session_restored +check=\w+ model=demo-b .*?restore_ms=([\d.]+)", log)
    ]
    sizes = [int(x) for x in re.findall(r"session_carried +bytes=(\d+) model=demo-b", log)]
    return {
        "first_turn_prompt_tokens": statistics.median(prompt_n),
        "first_turn_ms": statistics.median(first_ms),
        "follow_up_ttft_ms": statistics.median(ttft),
        "follow_up_cache_n": statistics.median(cache_n),
        "follow_up_prompt_ms": statistics.median(prompt_ms),
        "slot_file_mib": statistics.median(sizes) / 2**20 if sizes else 0.0,
        "carry_save_ms": statistics.median(saves) if saves else 0.0,
        "restore_ms": statistics.median(restores) if restores else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--sentences", type=int, default=100, help="~39 tokens each (default: ~3900 tokens)")
    ap.add_argument("--context", type=int, default=8192)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, spec in DEMO_MODELS.items():
            write_tiny_llama(root / f"{name}.gguf", spec)
        models = {
            "demo-b": {"path": str(root / "demo-b.gguf"), "context": args.context},
            "demo-a": {"path": str(root / "demo-a.gguf"), "context": 1024},
        }
        on = run_mode(root, models, True, args.reps, args.sentences)
        off = run_mode(root, models, False, args.reps, args.sentences)
    print(f"demo-b, context {args.context}, {args.reps} repetitions, medians")
    print(f"{'':<28} {'carry-over':>12} {'no carry-over':>14}")
    for key in on:
        print(f"{key:<28} {on[key]:>12.1f} {off[key]:>14.1f}")
    print(f"follow-up TTFT speed-up: {off['follow_up_ttft_ms'] / on['follow_up_ttft_ms']:.1f}x")


if __name__ == "__main__":
    main()
