"""Chat completion chunks → the Responses API's event stream, one chunk at a time.

`ResponsesStream.feed` takes one decoded chat.completion.chunk and returns the SSE events it
causes (already encoded), so the route writes them as they come: nothing is held back but
the open item's own text, kept for its `.done` events. The order is the one OpenAI sends:

    response.created, response.in_progress,
    per item: response.output_item.added, then its deltas
      (reasoning_text.delta | content_part.added + output_text.delta | function_call_arguments.delta),
      its .done events, response.output_item.done,
    response.completed (or response.incomplete when max_output_tokens cut it, response.failed).

Every event carries `type` and a `sequence_number`, as the openai SDK's stream reader expects.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def sse_event(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


@dataclass
class _Call:
    output_index: int
    item_id: str
    call_id: str
    name: str
    args: list[str] = field(default_factory=list)


class ResponsesStream:
    """One response's translation; `emit=False` aggregates only (the non-streamed answer)."""

    def __init__(
        self,
        model: str,
        echo: Mapping[str, Any],
        namespaces: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.id = _new_id("resp")
        self.model = model
        self.created_at = int(time.time())
        self.echo = dict(echo)
        self.namespaces = dict(namespaces or {})
        self.output: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.finished = False
        self._seq = 0
        self._open: str | None = None  # "reasoning" | "message": the item text deltas go to
        self._open_id = ""
        self._open_text: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._usage: Mapping[str, Any] | None = None
        self._timings: Mapping[str, Any] | None = None

    # ------------------------------------------------------------------ events

    def _ev(self, type_: str, **fields: Any) -> bytes:
        obj = {"type": type_, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(obj)

    def response(self, status: str, **extra: Any) -> dict[str, Any]:
        """The Response object as it stands (`output` holds the finished items)."""
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": list(self.output),
            "error": None,
            "incomplete_details": None,
            "usage": None,
            **self.echo,
            **extra,
        }

    def start(self) -> list[bytes]:
        r = self.response("in_progress")
        return [self._ev("response.created", response=r), self._ev("response.in_progress", response=r)]

    def _index(self) -> int:
        return len(self.output) + len(self._calls)

    def _open_item(self, kind: str) -> list[bytes]:
        out = self._close_open()
        self._open, self._open_text = kind, []
        idx = self._index()
        if kind == "reasoning":
            self._open_id = _new_id("rs")
            item: dict[str, Any] = {"type": "reasoning", "id": self._open_id, "summary": [], "content": []}
            out.append(self._ev("response.output_item.added", output_index=idx, item=item))
            return out
        self._open_id = _new_id("msg")
        item = {
            "type": "message",
            "id": self._open_id,
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        out.append(self._ev("response.output_item.added", output_index=idx, item=item))
        out.append(
            self._ev(
                "response.content_part.added",
                item_id=self._open_id,
                output_index=idx,
                content_index=0,
                part=part,
            )
        )
        return out

    def _close_open(self) -> list[bytes]:
        if self._open is None:
            return []
        text, idx, item_id = "".join(self._open_text), self._index(), self._open_id
        ids = {"item_id": item_id, "output_index": idx, "content_index": 0}
        out: list[bytes]
        part: dict[str, Any]
        item: dict[str, Any]
        if self._open == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            item = {
                "type": "reasoning",
                "id": item_id,
                "summary": [],
                "content": [part],
                "status": "completed",
            }
            out = [self._ev("response.reasoning_text.done", text=text, **ids)]
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item = {
                "type": "message",
                "id": item_id,
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
            out = [
                self._ev("response.output_text.done", text=text, logprobs=[], **ids),
                self._ev("response.content_part.done", part=part, **ids),
            ]
        out.append(self._ev("response.output_item.done", output_index=idx, item=item))
        self.output.append(item)
        self._open = None
        return out

    def _call_item(self, call: _Call, status: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "type": "function_call",
            "id": call.item_id,
            "call_id": call.call_id,
            "name": call.name,
            "arguments": "".join(call.args),
            "status": status,
        }
        if call.name in self.namespaces:  # answer as the client named it: namespace + its tool
            item["namespace"], item["name"] = self.namespaces[call.name]
        return item

    def _tool_delta(self, tc: Mapping[str, Any]) -> list[bytes]:
        index = _int(tc.get("index"))
        raw_fn = tc.get("function")
        fn: Mapping[str, Any] = raw_fn if isinstance(raw_fn, Mapping) else {}
        out: list[bytes] = []
        call = self._calls.get(index)
        if call is None:
            out += self._close_open()
            call = _Call(
                self._index(), _new_id("fc"), str(tc.get("id") or _new_id("call")), str(fn.get("name") or "")
            )
            self._calls[index] = call
            out.append(
                self._ev(
                    "response.output_item.added",
                    output_index=call.output_index,
                    item=self._call_item(call, "in_progress"),
                )
            )
        elif fn.get("name"):
            call.name += str(fn["name"])
        if args := fn.get("arguments"):
            call.args.append(str(args))
            out.append(
                self._ev(
                    "response.function_call_arguments.delta",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    delta=str(args),
                )
            )
        return out

    def _close_calls(self) -> list[bytes]:
        out: list[bytes] = []
        for call in sorted(self._calls.values(), key=lambda c: c.output_index):
            item = self._call_item(call, "completed")
            out.append(
                self._ev(
                    "response.function_call_arguments.done",
                    item_id=call.item_id,
                    output_index=call.output_index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            out.append(self._ev("response.output_item.done", output_index=call.output_index, item=item))
            self.output.append(item)
        self._calls.clear()
        return out

    def _text(self, kind: str, text: str) -> list[bytes]:
        out = self._close_calls()  # text after tool calls (rare) starts a new item after them
        if self._open != kind:
            out += self._open_item(kind)
        self._open_text.append(text)
        ids = {"item_id": self._open_id, "output_index": self._index(), "content_index": 0}
        if kind == "reasoning":
            out.append(self._ev("response.reasoning_text.delta", delta=text, **ids))
        else:
            out.append(self._ev("response.output_text.delta", delta=text, logprobs=[], **ids))
        return out

    # ------------------------------------------------------------------ input

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]:
        """One chat.completion.chunk (or a whole chat.completion's message as a delta)."""
        if isinstance(chunk.get("error"), Mapping):
            return self.fail(str(chunk["error"].get("message") or "llama-server reported an error"))
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
        if isinstance(chunk.get("timings"), Mapping):
            self._timings = chunk["timings"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            if isinstance(r := delta.get("reasoning_content"), str) and r:
                out += self._text("reasoning", r)
            if isinstance(c := delta.get("content"), str) and c:
                out += self._text("message", c)
            for i, tc in enumerate(delta.get("tool_calls") or ()):
                if isinstance(tc, Mapping):
                    out += self._tool_delta(tc if "index" in tc else {**tc, "index": i})
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return out

    def usage(self) -> dict[str, Any] | None:
        u, t = self._usage or {}, self._timings or {}
        if not u and not t:
            return None
        details = u.get("prompt_tokens_details")
        cached = (
            _int(details.get("cached_tokens")) if isinstance(details, Mapping) else _int(t.get("cache_n"))
        )
        inp = _int(u.get("prompt_tokens")) or _int(t.get("prompt_n")) + _int(t.get("cache_n"))
        outp = _int(u.get("completion_tokens")) or _int(t.get("predicted_n"))
        return {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": outp,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + outp,
        }

    def final(self) -> dict[str, Any]:
        """The finished Response object (after `finish`)."""
        if self.finish_reason == "length":
            return self.response(
                "incomplete", incomplete_details={"reason": "max_output_tokens"}, usage=self.usage()
            )
        return self.response("completed", usage=self.usage())

    def finish(self) -> list[bytes]:
        """Close what is open and end the stream (response.completed / response.incomplete)."""
        if self.finished:
            return []
        out = self._close_open() + self._close_calls()
        self.finished = True
        r = self.final()
        return [*out, self._ev(f"response.{r['status']}", response=r)]

    def fail(self, message: str, code: str = "server_error") -> list[bytes]:
        """End the stream with an error event and response.failed (the status line is sent)."""
        if self.finished:
            return []
        self.finished = True
        err = {"code": code, "message": message}
        return [
            self._ev("error", code=code, message=message, param=None),
            self._ev("response.failed", response=self.response("failed", error=err, usage=self.usage())),
        ]


def response_from_chat(
    completion: Mapping[str, Any],
    model: str,
    echo: Mapping[str, Any],
    namespaces: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """A whole chat.completion → the Response object (the same translation, unstreamed)."""
    t = ResponsesStream(model, echo, namespaces)
    t.feed(completion)
    t.finish()
    return t.final()
