"""llama-server answers → Ollama answers, token by token or aggregated.

A translator is fed every decoded llama-server event (an SSE `data:` JSON object) or a
whole non-streaming response, and returns the Ollama objects to write. `feed` runs once per
token, so it does a handful of dict lookups and builds at most one small dict.

The final `done:true` object is produced by `finish()`, called when the upstream stream has
ended (after `[DONE]`, or EOF for /completion): usage and timings may arrive after the
finish_reason (newer builds send a separate usage chunk), and the caller's clock gives
total_duration and load_duration (integer nanoseconds). Tool calls are emitted by
`finish()` too, each once and whole on its own `done:false` object before the final one.

For a non-streaming client create the translator with `emit=False`, feed the response (or
all chunks) and call `result()` for the single aggregated object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from guardian_proxy.ollama.encoding import now_rfc3339
from guardian_proxy.ollama.errors import OllamaError, upstream_error
from guardian_proxy.ollama.tools import ToolCallAccumulator


def _as_int(value: object) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return 0


def _as_float(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return 0.0


def convert_logprobs(entries: object, include_top: bool) -> list[dict[str, Any]]:
    """llama-server token probabilities (OpenAI `logprobs.content` or native
    `completion_probabilities`) → Ollama `logprobs`."""
    out: list[dict[str, Any]] = []
    if not isinstance(entries, list):
        return out
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        logprob = entry.get("logprob", entry.get("prob", 0.0))
        item: dict[str, Any] = {"token": entry.get("token", ""), "logprob": logprob}
        if include_top:
            tops = entry.get("top_logprobs") or entry.get("top_probs") or []
            item["top_logprobs"] = [
                {"token": t.get("token", ""), "logprob": t.get("logprob", t.get("prob", 0.0))}
                for t in tops
                if isinstance(t, Mapping)
            ]
        out.append(item)
    return out


def done_reason_for(finish_reason: object) -> str:
    """Ollama's done_reason: `length` stays, everything else (stop, tool_calls, eos, word) is `stop`."""
    return "length" if finish_reason in ("length", "limit") else "stop"


class _Translator:
    """What chat and generate share: accumulation, finish bookkeeping and metrics."""

    def __init__(self, model: str, *, emit: bool, include_top_logprobs: bool) -> None:
        self.model = model
        self.emit = emit
        self.include_top_logprobs = include_top_logprobs
        self.done_reason: str | None = None
        """Set once llama-server reported the end of generation (finish_reason / stop:true)."""
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._logprobs: list[dict[str, Any]] = []
        self._timings: Mapping[str, Any] | None = None
        self._usage: Mapping[str, Any] | None = None
        self._prompt_total = 0  # prompt tokens as llama-server counts them outside timings
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once the upstream said generation ended; a stream that ends before is broken."""
        return self.done_reason is not None

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def thinking(self) -> str:
        return "".join(self._thinking)

    def _note_stats(self, chunk: Mapping[str, Any]) -> None:
        timings = chunk.get("timings")
        if timings:
            self._timings = timings
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
            self._prompt_total = _as_int(usage.get("prompt_tokens")) or self._prompt_total

    def metrics(self, total_duration: float = 0, load_duration: float = 0) -> dict[str, int]:
        """Ollama metrics in integer nanoseconds; zero fields left out (Go's omitempty).

        prompt_eval_count = timings.prompt_n + timings.cache_n (Ollama's own mapping). ik
        builds have no cache_n and count only new tokens in prompt_n, so then the larger of
        prompt_n and llama-server's total prompt count (usage / tokens_evaluated) is used.
        `prompt_eval_cached_count` (Guardian's addition) is the part of prompt_eval_count that
        came from the prompt cache; prompt_eval_duration covers only the rest.
        """
        prompt_count = prompt_ns = eval_count = eval_ns = cached = 0
        t = self._timings
        if t:
            prompt_n = _as_int(t.get("prompt_n"))
            cache_n = t.get("cache_n")
            prompt_count = (
                prompt_n + _as_int(cache_n) if cache_n is not None else max(prompt_n, self._prompt_total)
            )
            cached = prompt_count - prompt_n  # taken from the KV cache, not evaluated
            prompt_ns = int(_as_float(t.get("prompt_ms")) * 1e6)
            eval_count = _as_int(t.get("predicted_n"))
            eval_ns = int(_as_float(t.get("predicted_ms")) * 1e6)
        if not prompt_count:
            prompt_count = self._prompt_total
        if not eval_count and self._usage:
            eval_count = _as_int(self._usage.get("completion_tokens"))
        m: dict[str, int] = {}
        for key, value in (
            ("total_duration", int(total_duration)),
            ("load_duration", int(load_duration)),
            ("prompt_eval_count", prompt_count),
            ("prompt_eval_cached_count", cached),
            ("prompt_eval_duration", prompt_ns),
            ("eval_count", eval_count),
            ("eval_duration", eval_ns),
        ):
            if value > 0:
                m[key] = value
        return m

    def _check_finish(self) -> str:
        if self._finished:
            raise RuntimeError("finish()/result() called twice")
        self._finished = True
        if self.done_reason is None:
            raise OllamaError(500, "llama-server ended the response before it was complete")
        return self.done_reason

    def _openai_choice(self, chunk: Mapping[str, Any]) -> tuple[str, str, list[dict[str, Any]] | None, Any]:
        """(content, reasoning, logprobs, tool_calls) of an OpenAI chunk or response; records stats."""
        err = chunk.get("error")
        if err is not None:
            raise upstream_error(500, chunk)
        self._note_stats(chunk)
        choices = chunk.get("choices")
        if not choices:
            return "", "", None, None
        choice = choices[0]
        delta = choice.get("delta") or choice.get("message") or {}
        content = delta.get("content") or ""
        reasoning = delta.get("reasoning_content") or ""
        logprobs = None
        lp = choice.get("logprobs")
        if lp:
            logprobs = convert_logprobs(lp.get("content"), self.include_top_logprobs) or None
        finish = choice.get("finish_reason")
        if finish:
            self.done_reason = done_reason_for(finish)
        if content:
            self._content.append(content)
        if reasoning:
            self._thinking.append(reasoning)
        if logprobs:
            self._logprobs.extend(logprobs)
        return content, reasoning, logprobs, delta.get("tool_calls")


class ChatStreamTranslator(_Translator):
    """llama-server /v1/chat/completions (streamed or not) → /api/chat objects."""

    def __init__(self, model: str, *, emit: bool = True, include_top_logprobs: bool = False) -> None:
        super().__init__(model, emit=emit, include_top_logprobs=include_top_logprobs)
        self._tools = ToolCallAccumulator()

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One decoded llama-server event → zero or one `done:false` objects.

        Raises OllamaError for an `{"error": …}` event (write it with `error_line`).
        """
        content, reasoning, logprobs, tool_calls = self._openai_choice(chunk)
        if tool_calls:
            self._tools.add(tool_calls)
        if not self.emit or not (content or reasoning or logprobs):
            return []
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["thinking"] = reasoning
        out: dict[str, Any] = {
            "model": self.model,
            "created_at": now_rfc3339(),
            "message": message,
            "done": False,
        }
        if logprobs:
            out["logprobs"] = logprobs
        return [out]

    def tool_calls(self) -> list[dict[str, Any]]:
        """The accumulated calls as Ollama tool calls (raises OllamaError on invalid JSON)."""
        return self._tools.calls() if self._tools else []

    def finish(self, *, total_duration: float = 0, load_duration: float = 0) -> list[dict[str, Any]]:
        """The closing objects: one per tool call, then the `done:true` one with metrics.

        Call once, after the upstream stream ended. Raises OllamaError if it never finished
        or a tool call's arguments are not valid JSON.
        """
        done_reason = self._check_finish()
        out: list[dict[str, Any]] = []
        for call in self.tool_calls():
            message = {"role": "assistant", "content": "", "tool_calls": [call]}
            out.append({"model": self.model, "created_at": now_rfc3339(), "message": message, "done": False})
        final: dict[str, Any] = {
            "model": self.model,
            "created_at": now_rfc3339(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": done_reason,
            "done": True,
        }
        final.update(self.metrics(total_duration, load_duration))
        out.append(final)
        return out

    def result(self, *, total_duration: float = 0, load_duration: float = 0) -> dict[str, Any]:
        """The single non-streaming object: content, thinking and tool calls aggregated."""
        done_reason = self._check_finish()
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self._thinking:
            message["thinking"] = self.thinking
        calls = self.tool_calls()
        if calls:
            message["tool_calls"] = calls
        out: dict[str, Any] = {
            "model": self.model,
            "created_at": now_rfc3339(),
            "message": message,
            "done_reason": done_reason,
            "done": True,
        }
        out.update(self.metrics(total_duration, load_duration))
        if self._logprobs:
            out["logprobs"] = self._logprobs
        return out


Upstream = Literal["chat", "native"]


class GenerateStreamTranslator(_Translator):
    """llama-server /completion or /infill (`upstream="native"`) or /v1/chat/completions
    (`upstream="chat"`) → /api/generate objects (`response` instead of `message`)."""

    def __init__(
        self,
        model: str,
        *,
        upstream: Upstream = "native",
        emit: bool = True,
        include_top_logprobs: bool = False,
    ) -> None:
        super().__init__(model, emit=emit, include_top_logprobs=include_top_logprobs)
        self.upstream = upstream

    @property
    def text(self) -> str:
        """The generated text so far (for tokenizing prompt+output into `context`)."""
        return self.content

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One decoded llama-server event (or a whole response) → zero or one `done:false` objects."""
        if self.upstream == "chat":
            content, reasoning, logprobs, _ = self._openai_choice(chunk)
        else:
            content, reasoning, logprobs = self._native(chunk)
        if not self.emit or not (content or reasoning or logprobs):
            return []
        out: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339(), "response": content}
        if reasoning:
            out["thinking"] = reasoning
        out["done"] = False
        if logprobs:
            out["logprobs"] = logprobs
        return [out]

    def _native(self, chunk: Mapping[str, Any]) -> tuple[str, str, list[dict[str, Any]] | None]:
        err = chunk.get("error")
        if err is not None:
            raise upstream_error(500, chunk)
        content = chunk.get("content") or ""
        if content:
            self._content.append(content)
        logprobs = None
        probs = chunk.get("completion_probabilities")
        if probs:
            logprobs = convert_logprobs(probs, self.include_top_logprobs) or None
            if logprobs:
                self._logprobs.extend(logprobs)
        if chunk.get("stop"):
            self.done_reason = done_reason_for(chunk.get("stop_type"))
            self._note_stats(chunk)
            self._prompt_total = _as_int(chunk.get("tokens_evaluated")) or self._prompt_total
        return content, "", logprobs

    def _final(
        self,
        done_reason: str,
        response: str,
        thinking: str,
        context: list[int] | None,
        total: float,
        load: float,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339(), "response": response}
        if thinking:
            out["thinking"] = thinking
        out["done"] = True
        out["done_reason"] = done_reason
        if context:
            out["context"] = context
        out.update(self.metrics(total, load))
        return out

    def finish(
        self, *, total_duration: float = 0, load_duration: float = 0, context: list[int] | None = None
    ) -> list[dict[str, Any]]:
        """The closing `done:true` object; `context` (token ids of prompt+output) when the caller has it."""
        return [self._final(self._check_finish(), "", "", context, total_duration, load_duration)]

    def result(
        self, *, total_duration: float = 0, load_duration: float = 0, context: list[int] | None = None
    ) -> dict[str, Any]:
        """The single non-streaming object with the whole `response` (and `thinking`)."""
        done_reason = self._check_finish()
        out = self._final(done_reason, self.content, self.thinking, context, total_duration, load_duration)
        if self._logprobs:
            out["logprobs"] = self._logprobs
        return out
