#!/usr/bin/env python3
"""A fake llama-server for Guardian's integration tests.

It exists for faults a real llama-server cannot produce on cue: slow or failed loads, a crash
mid-stream, a SIGTERM that is ignored, ik_llama.cpp quirks (logs on stdout, HTTP that hangs while
loading), tool-call deltas and exact timings. Everything it says on the wire follows llama-server
(see /work/shared/reference/llama-server.md); what it cannot know it makes up deterministically.

Run it as llama-server is run (every other flag is accepted and ignored)::

    python tests/fakes/fake_llama_server.py -m MODEL.gguf --host 127.0.0.1 --port N --alias NAME [...]

or through the executable wrapper ``tests/fakes/fake-llama-server`` (for a Guardian backend
``binary:``), which runs ``$FAKE_LLAMA_PYTHON`` (default ``python3``); tests set
``FAKE_LLAMA_PYTHON=sys.executable`` so the wrapper uses the virtualenv that has aiohttp.

Environment:
  FAKE_LLAMA_CONFIG  JSON file ``{"default": {...}, "models": {"<alias>": {...}}}``; the alias dict
                     overrides the default one. Re-read on every request, so a test can change
                     behaviour mid-test (write it with ``write_config``, which is atomic).
  FAKE_LLAMA_RECORD  file to which one JSON line is appended per request:
                     ``{"alias", "method", "path", "query", "body"}``; plus one
                     ``{"alias", "event": "start", "argv", "pid"}`` line at start-up and one
                     ``{"alias", "event": "disconnect", "path"}`` line when a client goes away
                     mid-generation.

Config keys are listed in STARTUP_KEYS (read once, when the process starts) and REQUEST_KEYS (read
per request); an unknown key is an error, so a typo cannot silently test nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import signal
import socket
import string
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

FAKE_DIR = Path(__file__).resolve().parent
FAKE_SCRIPT = FAKE_DIR / "fake_llama_server.py"
FAKE_BINARY = FAKE_DIR / "fake-llama-server"

# Read once at start-up: they shape the process itself.
STARTUP_KEYS = frozenset(
    {
        "flavor",  # "upstream" | "ik"
        "load_delay_s",  # seconds spent "loading"
        "load_fail",  # print the load error and exit 1 after the delay
        "hang_forever_loading",  # never become ready
        "crash_after_s",  # os._exit(1) this long after becoming ready
        "ignore_sigterm",  # SIG_IGN for SIGTERM from the first instant
        "buffers_mib",  # {"model": x, "kv": y, "compute": z}; a number (CPU) or {device: MiB}
        "reject_flags",  # flags answered with "error: unknown argument" (ik default: ["-fmoe"])
    }
)
# Read on every request.
REQUEST_KEYS = frozenset(
    {
        "content",  # list of content tokens (default DEFAULT_CONTENT; [] when tool_calls are set)
        "reasoning",  # list of tokens sent first as reasoning_content deltas
        "tool_calls",  # [{"name", "arguments": dict or raw string, "id"?}]
        "token_delay_s",  # sleep before each generated delta
        "prompt_delay_s",  # sleep before the first one (prompt processing)
        "eof_delay_s",  # sleep between `data: [DONE]` and the end of the response
        "crash_mid_stream_after",  # os._exit(1) after N content chunks
        "timings",  # exact timings values to report (prompt_n, prompt_ms, predicted_n, ...)
        "finish_reason",  # force "stop" / "length" / "tool_calls"
        "error",  # {"code", "message", "type"}: generation endpoints answer with this error
        "embedding_dim",  # default 16
        "n_ctx_train",  # default 4096; also the context when -c is 0
        "validate_chat",  # default true: reject messages/tools the way llama.cpp does
    }
)
KNOWN_KEYS = STARTUP_KEYS | REQUEST_KEYS

DEFAULT_CONTENT = ["Hello", ",", " I", " am", " a", " fake", " llama", "."]
IK_DEFAULT_REJECTS = ["-fmoe"]  # gone from ik_llama.cpp; a stale one makes the server exit
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
BUILD_INFO = "b1-fake"

# Flags that take a value even when it looks like a flag (e.g. "-n -1"). Others are guessed.
VALUE_FLAGS = frozenset(
    {
        "-m", "--model", "--host", "--port", "-a", "--alias", "-c", "--ctx-size", "-np",
        "--parallel", "--slot-save-path", "--api-key", "--api-key-file", "--log-format", "-n",
        "--n-predict", "-ngl", "--n-gpu-layers", "--gpu-layers", "-ts", "--tensor-split", "-sm",
        "--split-mode", "-mg", "--main-gpu", "-ctk", "--cache-type-k", "-ctv", "--cache-type-v",
        "-b", "--batch-size", "-ub", "--ubatch-size", "-t", "--threads", "-tb", "--threads-batch",
        "-lv", "--verbosity", "--log-verbosity", "-ot", "--override-tensor", "--override-kv",
        "--rpc", "-mla", "-amb", "--chat-template", "--chat-template-file",
        "--chat-template-kwargs", "-s", "--seed", "-ncmoe", "--n-cpu-moe", "-to", "--timeout",
        "--threads-http", "--reasoning-format", "--reasoning-budget", "-dev", "--device",
        "--mmproj", "-md", "--model-draft", "-cram", "--cache-ram",
    }
)  # fmt: skip
# Switches never take a value, even if the next token does not start with "-".
SWITCHES = frozenset(
    {
        "--jinja", "--no-jinja", "--metrics", "--embedding", "--embeddings", "--reranking",
        "--rerank", "--mlock", "--no-mmap", "-fmoe", "-no-fmoe", "-rtr", "--run-time-repack",
        "-cb", "--cont-batching", "-nocb", "--no-cont-batching", "--no-webui", "-v", "--verbose",
        "--log-verbose", "--props", "--slots", "--no-slots", "-kvu", "--kv-unified", "-nkvo",
        "--no-kv-offload", "--no-warmup", "--check-tensors", "--context-shift",
        "--no-context-shift", "-no-fa", "--no-flash-attn", "--log-disable", "-cmoe", "--cpu-moe",
        "--no-perf", "--list-devices", "--version", "-h", "--help", "--usage", "--reuse-port",
    }
)  # fmt: skip

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- helpers for tests


def fake_env(config_path: Path | str | None = None, record_path: Path | str | None = None) -> dict[str, str]:
    """os.environ plus what the fake needs: the wrapper's interpreter, config and record files."""
    env = dict(os.environ)
    env["FAKE_LLAMA_PYTHON"] = sys.executable
    if config_path is not None:
        env["FAKE_LLAMA_CONFIG"] = str(config_path)
    if record_path is not None:
        env["FAKE_LLAMA_RECORD"] = str(record_path)
    return env


def write_config(path: Path | str, config: Json) -> None:
    """Write a config atomically, so a fake re-reading it never sees half a file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, target)


def read_records(path: Path | str) -> list[Json]:
    """The record file's lines, parsed; an absent file is an empty list."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def free_port() -> int:
    """A TCP port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- config and CLI


class ConfigError(Exception):
    pass


def load_config(model_id: str) -> Json:
    """The merged config for this alias; absent file or env var means all defaults."""
    path = os.environ.get("FAKE_LLAMA_CONFIG")
    if not path:
        return {}
    data: Any = None
    for _ in range(20):  # a test writing non-atomically may leave a torn file for an instant
        try:
            data = json.loads(Path(path).read_text())
            break
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            err = exc
            time.sleep(0.005)
    else:
        raise ConfigError(f"FAKE_LLAMA_CONFIG {path}: invalid JSON: {err}")
    if not isinstance(data, dict):
        raise ConfigError(f"FAKE_LLAMA_CONFIG {path}: top level must be an object")
    merged: Json = dict(data.get("default") or {})
    merged.update((data.get("models") or {}).get(model_id) or {})
    unknown = sorted(set(merged) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"FAKE_LLAMA_CONFIG {path}: unknown key(s) {unknown}")
    return merged


@dataclass
class Options:
    """The llama-server flags the fake acts on; the rest are accepted and ignored."""

    argv: list[str]
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    alias: str | None = None
    ctx: int = 4096
    n_parallel: int = 1
    embeddings: bool = False
    metrics: bool = False
    slot_save_path: str | None = None
    api_keys: list[str] = field(default_factory=list)
    log_json: bool = False
    no_slots: bool = False
    flags: list[str] = field(default_factory=list)  # every flag name seen, for reject checks
    strays: list[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        # llama-server reports --alias, else the -m path as given.
        return self.alias or self.model or "unknown"


def _looks_like_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)  # "-1" is a value (e.g. -ngl -1), not a flag
        return False
    except ValueError:
        return True


def parse_args(argv: list[str]) -> Options:
    """Parse like llama-server, except that unknown flags are skipped rather than fatal."""
    opts = Options(argv=list(argv))
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not _looks_like_flag(tok):
            opts.strays.append(tok)
            continue
        name, eq, inline = tok.partition("=")
        if not name.startswith("--"):
            name, eq, inline = tok, "", ""  # "=" only splits long options
        opts.flags.append(name)
        value: str | None = inline if eq else None
        if value is None and name not in SWITCHES:
            if name in VALUE_FLAGS or (i < len(argv) and not _looks_like_flag(argv[i])):
                if i < len(argv):
                    value = argv[i]
                    i += 1
        _apply_flag(opts, name, value)
    return opts


def _apply_flag(opts: Options, name: str, value: str | None) -> None:
    if name in ("-m", "--model"):
        opts.model = value
    elif name == "--host" and value is not None:
        opts.host = value
    elif name == "--port" and value is not None:
        opts.port = _int_arg(name, value)
    elif name in ("-a", "--alias"):
        opts.alias = value
    elif name in ("-c", "--ctx-size") and value is not None:
        opts.ctx = _int_arg(name, value)
    elif name in ("-np", "--parallel") and value is not None:
        opts.n_parallel = max(1, _int_arg(name, value))  # -1 (auto) becomes 1 here
    elif name in ("--embedding", "--embeddings"):
        opts.embeddings = True
    elif name == "--metrics":
        opts.metrics = True
    elif name == "--slot-save-path":
        opts.slot_save_path = value
    elif name == "--api-key" and value:
        opts.api_keys.extend(k for k in value.split(",") if k)
    elif name == "--log-format":
        opts.log_json = value == "json"
    elif name == "--no-slots":
        opts.no_slots = True


def _int_arg(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        die(f"error: invalid argument: {name} {value}")


def die(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(code)


def hard_exit(code: int) -> NoReturn:
    """Leave the way a crash or a C exit() does: no cleanup, whatever the event loop is doing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe must not stop the exit
            pass
    os._exit(code)


def record(entry: Json) -> None:
    path = os.environ.get("FAKE_LLAMA_RECORD")
    if not path:
        return
    # One O_APPEND write per line, so several fakes can share one record file.
    line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def dumps(obj: Any) -> str:
    # nlohmann's dump(): compact, raw UTF-8.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def rand_id(n: int = 32) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=n))


# --------------------------------------------------------------------------- tokens and text


def tokenize(text: str, add_special: bool = False) -> list[int]:
    """Byte-level and invertible: byte b is token b + 3 (like llama's <0xXX> tokens); BOS is 1."""
    ids = [b + 3 for b in text.encode()]
    return [1, *ids] if add_special else ids


def detokenize(ids: list[int]) -> str:
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")


def prompt_tokens(text: str) -> list[str]:
    # Prompt accounting uses 4-byte pieces, closer to real token counts than bytes.
    return [text[i : i + 4] for i in range(0, len(text), 4)] or [""]


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def apply_template(messages: Any) -> str:
    """ChatML, like CHAT_TEMPLATE, plus tool calls so they count as prompt."""
    out = []
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            continue
        text = message_text(msg.get("content"))
        if msg.get("tool_calls"):
            text += dumps(msg["tool_calls"])
        out.append(f"<|im_start|>{msg.get('role', '')}\n{text}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def embedding_for(text: str, dim: int) -> list[float]:
    """A deterministic, L2-normalised vector (llama-server normalises by default)."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        raw.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    vec = raw[:dim]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def validate_chat(body: Json) -> str | None:
    """llama.cpp's common_chat_msgs_parse_oaicompat / tools parsing rules; the error or None."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return f"Failed to parse messages: Expected 'messages' to be an array, got {dumps(messages)}"
    for msg in messages:
        if not isinstance(msg, dict):
            return f"Failed to parse messages: Expected 'message' to be an object, got {dumps(msg)}"
        if "role" not in msg:
            return f"Failed to parse messages: Missing 'role' in message: {dumps(msg)}"
        content = msg.get("content")
        if "content" in msg and not (content is None or isinstance(content, (str, list))):
            return (
                "Failed to parse messages: Invalid 'content' type: expected string or array, got "
                f"{dumps(content)} (ref: https://github.com/ggml-org/llama.cpp/issues/8367)"
            )
        for tc in msg.get("tool_calls") or []:
            if not isinstance(tc, dict) or "type" not in tc:
                return f"Failed to parse messages: Missing tool call type: {dumps(tc)}"
            if tc["type"] != "function":
                return f"Failed to parse messages: Unsupported tool call type: {dumps(tc)}"
            fn = tc.get("function")
            if not isinstance(fn, dict):
                return f"Failed to parse messages: Missing tool call function: {dumps(tc)}"
            if "name" not in fn:
                return f"Failed to parse messages: Missing tool call name: {dumps(tc)}"
            if not isinstance(fn.get("arguments"), str):
                # Older llama.cpp assigns arguments to a std::string: an object throws.
                kind = type(fn.get("arguments")).__name__
                return f"Failed to parse messages: [json.exception.type_error.302] type must be string, but is {kind}"
        if "content" not in msg and "tool_calls" not in msg:
            return (
                "Failed to parse messages: Expected 'content' or 'tool_calls' (ref: "
                "https://github.com/ggml-org/llama.cpp/issues/8367 & "
                "https://github.com/ggml-org/llama.cpp/issues/12279)"
            )
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict):
            return "Failed to parse tools: [json.exception.out_of_range.403] key 'function' not found"
        for key in ("name", "description", "parameters"):
            if key not in fn:
                # This llama.cpp version calls function.at("description") and .at("parameters").
                return f"Failed to parse tools: [json.exception.out_of_range.403] key '{key}' not found"
    return None


# --------------------------------------------------------------------------- generation plan


@dataclass
class ToolCallPlan:
    id: str
    name: str
    arguments: str  # the JSON string, as llama-server sends it

    def chunks(self) -> list[str]:
        # Several small string deltas, so a client must accumulate per index.
        return [self.arguments[i : i + 4] for i in range(0, len(self.arguments), 4)]


@dataclass
class Plan:
    """What one generation request will emit, decided up front."""

    reasoning: list[str]
    pieces: list[str]
    tool_calls: list[ToolCallPlan]
    finish_reason: str
    stop_type: str  # eos | limit | word
    stopping_word: str
    prompt_text: str
    timings: Json
    usage: Json
    token_delay_s: float
    prompt_delay_s: float
    crash_after: int | None
    eof_delay_s: float = 0.0

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _cap(body: Json, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _stops(body: Json) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def make_plan(
    cfg: Json,
    body: Json,
    *,
    chat: bool,
    prompt_text: str,
    cache_n: int,
    n_prompt: int,
    n_ctx_slot: int,
    ik: bool,
) -> Plan:
    tool_cfg = list(cfg.get("tool_calls") or []) if chat else []
    content = [str(t) for t in cfg["content"]] if "content" in cfg else ([] if tool_cfg else DEFAULT_CONTENT)
    reasoning = [str(t) for t in cfg.get("reasoning") or []] if chat else []

    stop_type, stopping_word = "eos", ""
    cap = _cap(body, ("n_predict", "max_completion_tokens", "max_tokens"))
    if cap is not None and len(content) > cap:
        content, stop_type = content[:cap], "limit"
    text = "".join(content)
    hits = [(text.find(s), s) for s in _stops(body) if s in text]
    if hits:
        cut, stopping_word = min(hits)
        stop_type = "word"
        pieces, pos = [], 0
        for tok in content:  # the stop string and what follows are never sent
            if pos >= cut:
                break
            pieces.append(tok[: cut - pos])
            pos += len(tok)
        content = [p for p in pieces if p]

    tool_calls = []
    for i, tc in enumerate(tool_cfg):
        args = tc.get("arguments", {})
        tool_calls.append(
            ToolCallPlan(
                id=str(tc.get("id") or rand_id()),
                name=str(tc.get("name", f"tool_{i}")),
                arguments=args if isinstance(args, str) else dumps(args),
            )
        )
    finish = "tool_calls" if tool_calls else ("length" if stop_type == "limit" else "stop")
    if cfg.get("finish_reason"):
        finish = str(cfg["finish_reason"])
        if finish == "length":
            stop_type = "limit"

    predicted = len(reasoning) + len(content) + sum(1 + len(t.chunks()) for t in tool_calls)
    timings = make_timings(cfg.get("timings") or {}, n_prompt, cache_n, predicted, n_ctx_slot, ik)
    n_prompt_total = int(timings.get("prompt_n", 0)) + int((cfg.get("timings") or {}).get("cache_n", cache_n))
    n_pred = int(timings.get("predicted_n", predicted))
    crash = cfg.get("crash_mid_stream_after")
    return Plan(
        reasoning=reasoning,
        pieces=content,
        tool_calls=tool_calls,
        finish_reason=finish,
        stop_type=stop_type,
        stopping_word=stopping_word,
        prompt_text=prompt_text,
        timings=timings,
        usage={
            "completion_tokens": n_pred,
            "prompt_tokens": n_prompt_total,
            "total_tokens": n_pred + n_prompt_total,
        },
        token_delay_s=float(cfg.get("token_delay_s", 0.0)),
        prompt_delay_s=float(cfg.get("prompt_delay_s", 0.0)),
        crash_after=int(crash) if crash is not None else None,
        eof_delay_s=float(cfg.get("eof_delay_s", 0.0)),
    )


def make_timings(over: Json, n_prompt: int, cache_n: int, predicted: int, n_ctx: int, ik: bool) -> Json:
    """llama-server's timings; configured values are reported exactly, the rest derived."""
    cache_n = int(over.get("cache_n", cache_n))
    prompt_n = int(over.get("prompt_n", max(n_prompt - cache_n, 0)))
    predicted_n = int(over.get("predicted_n", predicted))
    prompt_ms = float(over.get("prompt_ms", round(prompt_n * 0.2 + 0.05, 3)))
    predicted_ms = float(over.get("predicted_ms", round(predicted_n * 2.5, 3)))
    t: Json = {} if ik else {"cache_n": cache_n}
    t.update(
        {
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": 1e3 * prompt_n / prompt_ms if prompt_ms else 0.0,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
            "predicted_per_second": 1e3 * predicted_n / predicted_ms if predicted_ms else 0.0,
        }
    )
    if ik:
        t["n_ctx"] = n_ctx
        t["n_past"] = prompt_n + cache_n + predicted_n
    t.update({k: v for k, v in over.items() if not (ik and k == "cache_n")})
    return t


# --------------------------------------------------------------------------- server state


@dataclass
class Slot:
    id: int
    busy: bool = False
    id_task: int = -1
    cached: list[str] = field(default_factory=list)  # prompt pieces held in the "KV cache"
    n_decoded: int = 0


class FakeServer:
    """The process-wide state: flags, flavor, readiness, slots, counters and logging."""

    def __init__(self, opts: Options, startup_cfg: Json) -> None:
        self.opts = opts
        self.ik = startup_cfg.get("flavor", "upstream") == "ik"
        self.startup_cfg = startup_cfg
        self.ready = False
        self.terminating = False
        self.stop_event = asyncio.Event()
        self.port = opts.port
        n_ctx = opts.ctx if opts.ctx > 0 else int(startup_cfg.get("n_ctx_train", 4096))
        self.n_ctx = n_ctx
        self.n_ctx_slot = max(1, n_ctx // opts.n_parallel)
        self.slots = [Slot(i) for i in range(opts.n_parallel)]
        self.slot_cond = asyncio.Condition()
        self.deferred = 0
        self.task_seq = 0
        self.counters = {
            "prompt_tokens": 0,
            "prompt_ms": 0.0,
            "predicted": 0,
            "predicted_ms": 0.0,
            "decode": 0,
        }
        self.t_start = int(time.time())

    # -- logging: upstream logs everything to stderr; ik's server log is printf to stdout,
    # while llama.cpp's own lines (buffers, loader) go to stderr in both forks.

    def llama_log(self, line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def ik_log(self, level: str, function: str, message: str, extra: Json | None = None) -> None:
        fields: Json = {"tid": str(threading.get_ident()), "timestamp": int(time.time())}
        if self.opts.log_json:
            fields.update({"level": level, "function": function, "line": 0, "msg": message})
            fields.update(extra or {})
            line = dumps(fields)
        else:
            fields.update(extra or {})
            line = f"{level:>4} [{function:>24}] {message} |" + "".join(
                f" {k}={dumps(v)}" for k, v in fields.items()
            )
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def log_banner(self) -> None:
        if self.ik:
            self.ik_log("INFO", "main", "build info", {"build": 1, "commit": "fake"})
            self.ik_log("INFO", "main", "system info", {"n_threads": 4, "total_threads": os.cpu_count() or 1})
        else:
            self.llama_log("build: 1 (fake) with python for linux")
            self.llama_log(f"system info: n_threads = 4, total_threads = {os.cpu_count() or 1}")
            self.llama_log("main: binding port with default address family")

    def log_bind_failure(self) -> None:
        if self.ik:
            sys.stderr.write(
                f"\ncouldn't bind to server socket: hostname={self.opts.host} port={self.opts.port}\n\n"
            )
            sys.stderr.flush()
        else:
            self.llama_log(
                f"srv          init: couldn't bind HTTP server socket, hostname: {self.opts.host}, "
                f"port: {self.opts.port}"
            )
            self.llama_log("srv  llama_server: exiting due to HTTP server error")

    def buffer_lines(self, stage: str, sizes: Any) -> None:
        per_dev = sizes if isinstance(sizes, dict) else {"CPU": float(sizes)}
        for dev, mib in per_dev.items():
            if stage == "model":
                fmt = "llm_load_tensors: {:>10} buffer size = {:8.2f} MiB"
                if not self.ik:
                    fmt = "load_tensors: {:>12} model buffer size = {:8.2f} MiB"
            elif stage == "kv":
                fmt = (
                    "llama_kv_cache_init" if self.ik else "llama_kv_cache"
                ) + ": {:>10} KV buffer size = {:8.2f} MiB"
            else:
                fmt = (
                    "llama_new_context_with_model" if self.ik else "sched_reserve"
                ) + ": {:>10} compute buffer size = {:8.2f} MiB"
            self.llama_log(fmt.format(dev, float(mib)))

    def log_loading(self) -> None:
        if not self.ik:
            self.llama_log("srv  llama_server: loading model")
        else:
            self.ik_log("INFO", "load_model", "loading model", {"model": self.opts.model})
        self.llama_log(
            f"llama_model_loader: loaded meta data with 24 key-value pairs and 12 tensors from {self.opts.model}"
        )
        self.llama_log(("llm_load_tensors" if self.ik else "load_tensors") + ": offloaded 0/1 layers to GPU")

    def log_load_failure(self) -> None:
        self.llama_log(f"llama_model_load: error loading model: fake load failure for {self.opts.model}")
        if self.ik:
            self.ik_log("ERR", "load_model", "unable to load model", {"model": self.opts.model})
            self.ik_log("ERR", "main", "exiting due to model loading error")
        else:
            self.llama_log(f"srv    load_model: failed to load model, '{self.opts.model}'")
            self.llama_log("srv  llama_server: exiting due to model loading error")

    def log_ready(self) -> None:
        if self.ik:
            self.ik_log("INFO", "main", "model loaded")
            self.ik_log("INFO", "main", "chat template", {"chat_template": CHAT_TEMPLATE})
            # ik logs --port as given (0 stays 0): Guardian must choose the port itself.
            self.ik_log(
                "INFO",
                "main",
                "HTTP server listening",
                {"hostname": self.opts.host, "port": str(self.opts.port), "n_threads_http": "3"},
            )
        else:
            self.llama_log("srv  llama_server: model loaded")
            self.llama_log(f"srv  llama_server: server is listening on http://{self.opts.host}:{self.port}")
            self.llama_log("srv  update_slots: all slots are idle")

    def log_shutdown(self) -> None:
        if self.ik:
            self.ik_log("INFO", "main", "cleaning up before exit")
        else:
            self.llama_log("srv    operator(): operator(): cleaning up before exit...")

    def log_request(self, request: web.Request, status: int) -> None:
        if request.path == "/v1/health":
            return
        peer = request.remote or ""
        if self.ik:
            self.ik_log(
                "INFO",
                "log_server_request",
                "request",
                {"remote_addr": peer, "status": status, "method": request.method, "path": request.path},
            )
        else:
            self.llama_log(f"srv  log_server_r: request: {request.method} {request.path} {peer} {status}")

    # -- signals

    def on_signal(self) -> None:
        if self.terminating:
            sys.stderr.write("Received second interrupt, terminating immediately.\n")
            hard_exit(1)
        self.terminating = True
        self.stop_event.set()

    # -- config

    def cfg(self) -> Json:
        return load_config(self.opts.model_id)

    # -- slots: a request waits (is deferred) while every slot is busy, as in llama-server

    async def acquire_slot(self, wanted: Any) -> Slot:
        async with self.slot_cond:
            self.deferred += 1
            try:
                while True:
                    free = [s for s in self.slots if not s.busy]
                    if isinstance(wanted, int) and 0 <= wanted < len(self.slots):
                        free = [s for s in free if s.id == wanted]
                    if free:
                        slot = free[0]
                        slot.busy = True
                        self.task_seq += 1
                        slot.id_task = self.task_seq
                        return slot
                    await self.slot_cond.wait()
            finally:
                self.deferred -= 1

    async def release_slot(self, slot: Slot) -> None:
        async with self.slot_cond:
            slot.busy = False
            slot.id_task = -1
            self.slot_cond.notify_all()

    @property
    def processing(self) -> int:
        return sum(1 for s in self.slots if s.busy)


# --------------------------------------------------------------------------- HTTP helpers


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json", charset="utf-8")


def error_response(code: int, message: str, type_: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message, "type": type_}}, status=code)


def config_error(exc: ConfigError) -> web.Response:
    return error_response(500, f"fake-llama-server config: {exc}", "server_error")


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


async def json_body(request: web.Request) -> Json | web.Response:
    """The request's JSON object, or the error llama-server gives for a bad body."""
    body = await read_body(request)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return error_response(
            500, "[json.exception.parse_error.101] parse error: invalid JSON body", "server_error"
        )
    return body


async def start_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


async def send_sse(resp: web.StreamResponse, obj: Any) -> None:
    await resp.write(f"data: {dumps(obj)}\n\n".encode())


async def crash_now() -> NoReturn:
    # Let the transport hand what was written to the kernel, then die like a segfault would.
    await asyncio.sleep(0.02)
    hard_exit(1)


# --------------------------------------------------------------------------- app


def build_app(st: FakeServer) -> web.Application:
    server_name = "ik_llama.cpp" if st.ik else "llama.cpp"
    ready_exempt = {"/models", "/v1/models", "/api/tags"}
    public = {"/health", "/v1/health", "/models", "/v1/models", "/api/tags", "/"}

    @web.middleware
    async def outer(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await read_body(request)
        record(
            {
                "alias": st.opts.model_id,
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "body": body,
            }
        )
        try:
            resp = await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            resp = error_response(404, "File Not Found", "not_found_error")
        st.log_request(request, resp.status)
        return resp

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Upstream answers 503 to every route but the model list until loaded (ik never
        # gets here while loading: its socket is not served yet).
        if not st.ready and request.path not in ready_exempt:
            return error_response(503, "Loading model", "unavailable_error")
        if st.opts.api_keys and request.path not in public:
            auth = request.headers.get("Authorization", "")
            key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
            if key not in st.opts.api_keys and request.headers.get("X-Api-Key") not in st.opts.api_keys:
                return error_response(401, "Invalid API Key", "authentication_error")
        return await handler(request)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = server_name

    app = web.Application(middlewares=[outer, gate])
    app.on_response_prepare.append(on_prepare)
    h = Handlers(st)
    r = app.router
    r.add_get("/health", h.health)
    r.add_get("/v1/models", h.models)
    r.add_get("/props", h.props)
    r.add_get("/slots", h.slots)
    r.add_get("/metrics", h.metrics)
    for path in ("/v1/chat/completions", "/chat/completions"):
        r.add_post(path, h.chat)
    r.add_post("/v1/completions", h.oai_completion)
    for path in ("/completion", "/completions"):
        r.add_post(path, h.native_completion)
    r.add_post("/v1/embeddings", h.oai_embeddings)
    for path in ("/embedding", "/embeddings"):
        r.add_post(path, h.native_embeddings)
    r.add_post("/tokenize", h.tokenize)
    r.add_post("/detokenize", h.detokenize)
    r.add_post("/apply-template", h.apply_template)
    if st.opts.slot_save_path:  # as in ik: the route exists only with --slot-save-path
        r.add_post("/slots/{id_slot}", h.slot_action)
    if not st.ik:  # ik has neither alias
        r.add_get("/v1/health", h.health)
        r.add_get("/models", h.models)
    return app


class Handlers:
    def __init__(self, st: FakeServer) -> None:
        self.st = st

    # -- simple endpoints

    async def health(self, request: web.Request) -> web.StreamResponse:
        if not self.st.ik:
            return json_response({"status": "ok"})
        idle = len(self.st.slots) - self.st.processing
        body = {
            "status": "ok" if idle else "no slot available",
            "slots_idle": idle,
            "slots_processing": self.st.processing,
        }
        status = 503 if idle == 0 and "fail_on_no_slot" in request.query else 200
        return json_response(body, status)

    async def models(self, request: web.Request) -> web.StreamResponse:
        try:
            cfg = self.st.cfg()
        except ConfigError as exc:
            return config_error(exc)
        model = self.st.opts.model or ""
        try:
            size = await asyncio.to_thread(os.path.getsize, model)
        except OSError:
            size = 0
        meta = {
            "vocab_type": 1,
            "n_vocab": 259,
            "n_ctx_train": int(cfg.get("n_ctx_train", 4096)),
            "n_embd": int(cfg.get("embedding_dim", 16)),
            "n_params": 1_000_000,
            "size": size,
        }
        entry = {
            "id": self.st.opts.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "llamacpp",
            "meta": meta,
        }
        return json_response({"object": "list", "data": [entry]})

    def _slot_json(self, slot: Slot) -> Json:
        return {
            "id": slot.id,
            "id_task": slot.id_task,
            "n_ctx": self.st.n_ctx_slot,
            "speculative": False,
            "is_processing": slot.busy,
            "params": {"n_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.95},
            "prompt": "",
            "next_token": {"has_next_token": slot.busy, "n_remain": -1, "n_decoded": slot.n_decoded},
        }

    async def props(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            {
                "default_generation_settings": self._slot_json(self.st.slots[0]) | {"is_processing": False},
                "total_slots": len(self.st.slots),
                "model_path": self.st.opts.model,
                "chat_template": CHAT_TEMPLATE,
                "modalities": {"vision": False, "audio": False},
                "build_info": BUILD_INFO,
            }
        )

    async def slots(self, request: web.Request) -> web.StreamResponse:
        if self.st.opts.no_slots:
            return error_response(501, "This server does not support slots endpoint.", "not_supported_error")
        if "fail_on_no_slot" in request.query and self.st.processing == len(self.st.slots):
            return error_response(503, "no slot available", "unavailable_error")
        return json_response([self._slot_json(s) for s in self.st.slots])

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        if not self.st.opts.metrics:
            return error_response(
                501, "This server does not support metrics endpoint.", "not_supported_error"
            )
        c = self.st.counters
        rows = [
            ("counter", "prompt_tokens_total", "Number of prompt tokens processed.", c["prompt_tokens"]),
            ("counter", "prompt_seconds_total", "Prompt process time", c["prompt_ms"] / 1e3),
            ("counter", "tokens_predicted_total", "Number of generation tokens processed.", c["predicted"]),
            ("counter", "tokens_predicted_seconds_total", "Predict process time", c["predicted_ms"] / 1e3),
            ("counter", "n_decode_total", "Total number of llama_decode() calls", c["decode"]),
            ("gauge", "requests_processing", "Number of requests processing.", self.st.processing),
            ("gauge", "requests_deferred", "Number of requests deferred.", self.st.deferred),
        ]
        text = "".join(
            f"# HELP llamacpp:{name} {help_}\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {value}\n"
            for kind, name, help_, value in rows
        )
        resp = web.Response(text=text, content_type="text/plain", charset="utf-8")
        resp.headers["Process-Start-Time-Unix"] = str(self.st.t_start)
        return resp

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        content = body.get("content", "")
        ids = tokenize(content if isinstance(content, str) else "", bool(body.get("add_special", False)))
        if body.get("with_pieces"):
            return json_response({"tokens": [{"id": i, "piece": detokenize([i])} for i in ids]})
        return json_response({"tokens": ids})

    async def detokenize(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        ids = [i for i in body.get("tokens") or [] if isinstance(i, int)]
        return json_response({"content": detokenize(ids)})

    async def apply_template(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        return json_response({"prompt": apply_template(body.get("messages"))})

    # -- embeddings

    async def _embed_inputs(
        self, request: web.Request, key_order: tuple[str, ...]
    ) -> tuple[Json, list[str], int] | web.Response:
        if not self.st.opts.embeddings:
            return error_response(
                501,
                "This server does not support embeddings. Start it with `--embeddings`",
                "not_supported_error",
            )
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            dim = int(self.st.cfg().get("embedding_dim", 16))
        except ConfigError as exc:
            return config_error(exc)
        raw = next((body[k] for k in key_order if k in body), None)
        if raw is None:
            return error_response(400, '"input" or "content" must be provided', "invalid_request_error")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw)):
            raw = [raw]
        texts = [x if isinstance(x, str) else dumps(x) for x in (raw if isinstance(raw, list) else [raw])]
        return body, texts, dim

    async def oai_embeddings(self, request: web.Request) -> web.StreamResponse:
        got = await self._embed_inputs(request, ("input", "content"))
        if isinstance(got, web.Response):
            return got
        body, texts, dim = got
        n = sum(len(prompt_tokens(t)) for t in texts)
        data = [
            {"embedding": embedding_for(t, dim), "index": i, "object": "embedding"}
            for i, t in enumerate(texts)
        ]
        return json_response(
            {
                "model": body.get("model") or self.st.opts.model_id,
                "object": "list",
                "usage": {"prompt_tokens": n, "total_tokens": n},
                "data": data,
            }
        )

    async def native_embeddings(self, request: web.Request) -> web.StreamResponse:
        got = await self._embed_inputs(request, ("content", "input"))
        if isinstance(got, web.Response):
            return got
        _body, texts, dim = got
        return json_response(
            [{"index": i, "embedding": [embedding_for(t, dim)]} for i, t in enumerate(texts)]
        )

    # -- slots save / restore / erase

    async def slot_action(self, request: web.Request) -> web.StreamResponse:
        try:
            slot = self.st.slots[int(request.match_info["id_slot"])]
        except (ValueError, IndexError):
            return error_response(400, "Invalid slot ID", "invalid_request_error")
        action = request.query.get("action", "")
        if action == "erase":
            n = len(slot.cached)
            slot.cached = []
            return json_response({"id_slot": slot.id, "n_erased": n})
        if action not in ("save", "restore"):
            return error_response(400, "Invalid action", "invalid_request_error")
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        filename = body.get("filename")
        if not isinstance(filename, str):
            return error_response(
                500, "[json.exception.out_of_range.403] key 'filename' not found", "server_error"
            )
        if not valid_filename(filename):
            return error_response(400, "Invalid filename", "invalid_request_error")
        path = Path(self.st.opts.slot_save_path or ".") / filename
        t0 = time.perf_counter()
        if action == "save":
            data = dumps(
                {"fake_llama_slot": 1, "alias": self.st.opts.model_id, "cached": slot.cached}
            ).encode()
            await asyncio.to_thread(path.write_bytes, data)
            ms = (time.perf_counter() - t0) * 1e3
            return json_response(
                {
                    "id_slot": slot.id,
                    "filename": filename,
                    "n_saved": len(slot.cached),
                    "n_written": len(data),
                    "timings": {"save_ms": ms},
                }
            )
        try:
            data = await asyncio.to_thread(path.read_bytes)
            cached = json.loads(data)["cached"]
        except (OSError, ValueError, KeyError, TypeError):
            return error_response(
                400,
                "Unable to restore slot, no available space in KV cache or invalid slot save file",
                "invalid_request_error",
            )
        slot.cached = [str(x) for x in cached]
        ms = (time.perf_counter() - t0) * 1e3
        return json_response(
            {
                "id_slot": slot.id,
                "filename": filename,
                "n_restored": len(slot.cached),
                "n_read": len(data),
                "timings": {"restore_ms": ms},
            }
        )

    # -- generation

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        """Shared path of the three generation endpoints: parse, plan, take a slot, emit."""
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            cfg = self.st.cfg()
        except ConfigError as exc:
            return config_error(exc)
        if kind == "chat":
            if "messages" not in body:
                return error_response(400, "'messages' is required", "invalid_request_error")
            if cfg.get("validate_chat", True):
                problem = validate_chat(body)
                if problem:
                    return error_response(500, problem, "server_error")
            prompt_text = apply_template(body["messages"])
            if body.get("tools"):
                prompt_text = dumps(body["tools"]) + prompt_text
        else:
            prompt = body.get("prompt", "")
            if isinstance(prompt, list) and all(isinstance(x, int) for x in prompt):
                prompt_text = detokenize(prompt)
            elif isinstance(prompt, list):
                prompt_text = "".join(x if isinstance(x, str) else dumps(x) for x in prompt)
            else:
                prompt_text = prompt if isinstance(prompt, str) else dumps(prompt)
        err = cfg.get("error")
        if isinstance(err, dict):
            code = int(err.get("code", 500))
            return error_response(
                code, str(err.get("message", "error")), str(err.get("type", "server_error"))
            )

        slot = await self.st.acquire_slot(body.get("id_slot"))
        try:
            pieces = prompt_tokens(prompt_text)
            cache_n = 0
            if body.get("cache_prompt", True):
                while (
                    cache_n < min(len(pieces), len(slot.cached)) and pieces[cache_n] == slot.cached[cache_n]
                ):
                    cache_n += 1
                cache_n = min(cache_n, len(pieces) - 1)  # llama-server always evaluates one token
            plan = make_plan(
                cfg,
                body,
                chat=kind == "chat",
                prompt_text=prompt_text,
                cache_n=cache_n,
                n_prompt=len(pieces),
                n_ctx_slot=self.st.n_ctx_slot,
                ik=self.st.ik,
            )
            slot.cached = pieces
            slot.n_decoded = 0
            emit = {"chat": self._emit_chat, "oai": self._emit_oai_completion, "native": self._emit_native}[
                kind
            ]
            resp = await emit(request, body, plan, slot)
            c = self.st.counters
            c["prompt_tokens"] += int(plan.timings.get("prompt_n", 0))
            c["prompt_ms"] += float(plan.timings.get("prompt_ms", 0.0))
            c["predicted"] += int(plan.timings.get("predicted_n", 0))
            c["predicted_ms"] += float(plan.timings.get("predicted_ms", 0.0))
            c["decode"] += 1 + int(plan.timings.get("predicted_n", 0))
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            # The client went away mid-generation; llama-server cancels the task and frees the slot.
            record({"alias": self.st.opts.model_id, "event": "disconnect", "path": request.path})
            raise
        finally:
            await self.st.release_slot(slot)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def oai_completion(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "oai")

    async def native_completion(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "native")

    async def _tick(self, plan: Plan, first: list[bool]) -> None:
        """The sleep before one generated delta (prompt time before the first)."""
        if first[0]:
            first[0] = False
            if plan.prompt_delay_s:
                await asyncio.sleep(plan.prompt_delay_s)
        if plan.token_delay_s:
            await asyncio.sleep(plan.token_delay_s)

    async def _simulate_blocking(self, plan: Plan) -> None:
        """Non-stream requests take the same time, and crash at the same point, as a stream."""
        n = len(plan.reasoning) + len(plan.pieces) + sum(1 + len(t.chunks()) for t in plan.tool_calls)
        await asyncio.sleep(plan.prompt_delay_s + plan.token_delay_s * n)
        if plan.crash_after is not None and plan.crash_after <= len(plan.pieces):
            await crash_now()

    def _model_name(self, body: Json) -> str:
        return str(body.get("model") or self.st.opts.model_id)

    def _fingerprint(self, obj: Json) -> Json:
        if not self.st.ik:
            obj["system_fingerprint"] = BUILD_INFO
        return obj

    async def _emit_chat(
        self, request: web.Request, body: Json, plan: Plan, slot: Slot
    ) -> web.StreamResponse:
        cid = "chatcmpl-" + rand_id()
        created = int(time.time())
        model = self._model_name(body)
        if not body.get("stream"):
            await self._simulate_blocking(plan)
            message: Json = {"role": "assistant", "content": plan.text}
            if plan.reasoning:
                message["reasoning_content"] = "".join(plan.reasoning)
            if plan.tool_calls:
                message["tool_calls"] = [
                    {"type": "function", "function": {"name": t.name, "arguments": t.arguments}, "id": t.id}
                    for t in plan.tool_calls
                ]
            out = {
                "choices": [{"finish_reason": plan.finish_reason, "index": 0, "message": message}],
                "created": created,
                "model": model,
            }
            self._fingerprint(out)
            out.update({"object": "chat.completion", "usage": plan.usage, "id": cid, "timings": plan.timings})
            return json_response(out)

        def chunk(delta: Json, finish: str | None = None) -> Json:
            obj: Json = {
                "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
                "created": created,
                "id": cid,
                "model": model,
            }
            self._fingerprint(obj)
            obj["object"] = "chat.completion.chunk"
            return obj

        first = [True]
        resp = await start_sse(request)
        await send_sse(resp, chunk({"role": "assistant", "content": None}))
        for tok in plan.reasoning:
            await self._tick(plan, first)
            await send_sse(resp, chunk({"reasoning_content": tok}))
        for n, tok in enumerate(plan.pieces):
            if plan.crash_after == n:
                await crash_now()
            await self._tick(plan, first)
            await send_sse(resp, chunk({"content": tok}))
            slot.n_decoded += 1
        if plan.crash_after == len(plan.pieces):
            await crash_now()
        for i, tc in enumerate(plan.tool_calls):
            await self._tick(plan, first)
            head = {
                "index": i,
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.name, "arguments": ""},
            }
            await send_sse(resp, chunk({"tool_calls": [head]}))
            for part in tc.chunks():
                await self._tick(plan, first)
                await send_sse(resp, chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
        final = chunk({}, plan.finish_reason)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage:
            await send_sse(resp, final)
            final = {"choices": [], "created": created, "id": cid, "model": model}
            self._fingerprint(final)
            final.update({"object": "chat.completion.chunk", "usage": plan.usage})
        final["timings"] = plan.timings  # timings ride on the last chunk
        await send_sse(resp, final)
        await resp.write(b"data: [DONE]\n\n")
        if plan.eof_delay_s:  # llama-server's lag between [DONE] and closing, stretched
            await asyncio.sleep(plan.eof_delay_s)
        await resp.write_eof()
        return resp

    async def _emit_oai_completion(
        self, request: web.Request, body: Json, plan: Plan, slot: Slot
    ) -> web.StreamResponse:
        cid = "cmpl-" + rand_id()
        created = int(time.time())
        model = self._model_name(body)

        def obj(text: str, finish: str | None) -> Json:
            out: Json = {
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                "created": created,
                "model": model,
            }
            self._fingerprint(out)
            out.update({"object": "text_completion", "id": cid})
            return out

        if not body.get("stream"):
            await self._simulate_blocking(plan)
            out = obj(plan.text, plan.finish_reason)
            out.update({"usage": plan.usage, "timings": plan.timings})
            return json_response(out)
        first = [True]
        resp = await start_sse(request)
        for n, tok in enumerate(plan.pieces):
            if plan.crash_after == n:
                await crash_now()
            await self._tick(plan, first)
            await send_sse(resp, obj(tok, None))
            slot.n_decoded += 1
        if plan.crash_after == len(plan.pieces):
            await crash_now()
        final = obj("", plan.finish_reason)
        final.update({"usage": plan.usage, "timings": plan.timings})
        await send_sse(resp, final)
        await resp.write(b"data: [DONE]\n\n")
        if plan.eof_delay_s:  # llama-server's lag between [DONE] and closing, stretched
            await asyncio.sleep(plan.eof_delay_s)
        await resp.write_eof()
        return resp

    async def _emit_native(
        self, request: web.Request, body: Json, plan: Plan, slot: Slot
    ) -> web.StreamResponse:
        stream = bool(body.get("stream"))
        final: Json = {
            "index": 0,
            "content": "" if stream else plan.text,
            "tokens": [],
            "id_slot": slot.id,
            "stop": True,
            "model": self._model_name(body),
            "tokens_predicted": plan.usage["completion_tokens"],
            "tokens_evaluated": plan.usage["prompt_tokens"],
            "generation_settings": {
                "n_predict": body.get("n_predict", -1),
                "temperature": body.get("temperature", 0.8),
                "stop": _stops(body),
            },
            "prompt": plan.prompt_text,
            "has_new_line": "\n" in plan.text,
            "truncated": False,
            "stop_type": plan.stop_type,
            "stopping_word": plan.stopping_word,
            "tokens_cached": plan.usage["prompt_tokens"] + plan.usage["completion_tokens"],
            "timings": plan.timings,
        }
        if not stream:
            await self._simulate_blocking(plan)
            return json_response(final)
        first = [True]
        resp = await start_sse(request)
        for n, tok in enumerate(plan.pieces):
            if plan.crash_after == n:
                await crash_now()
            await self._tick(plan, first)
            part = {
                "index": 0,
                "content": tok,
                "tokens": tokenize(tok),
                "stop": False,
                "id_slot": slot.id,
                "tokens_predicted": n + 1,
                "tokens_evaluated": plan.usage["prompt_tokens"],
            }
            await send_sse(resp, part)
            slot.n_decoded += 1
        if plan.crash_after == len(plan.pieces):
            await crash_now()
        await send_sse(resp, final)  # the native stream has no [DONE]
        await resp.write_eof()
        return resp


def valid_filename(name: str) -> bool:
    """Roughly llama.cpp's fs_validate_filename: a plain file name, never a path."""
    if not name or len(name.encode()) > 255 or name in (".", ".."):
        return False
    if any(c in name for c in "/\\:") or ".." in name:
        return False
    if name != name.strip() or any(ord(c) < 0x20 for c in name):
        return False
    return True


# --------------------------------------------------------------------------- process


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen now (cpp-httplib's bind_to_port also listens); serve later or at once."""
    family, type_, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(511)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(opts: Options, startup_cfg: Json) -> NoReturn:
    st = FakeServer(opts, startup_cfg)
    st.log_banner()
    try:
        sock = bind_socket(opts.host, opts.port)
    except OSError:
        st.log_bind_failure()
        hard_exit(1)
    st.port = int(sock.getsockname()[1])
    if opts.slot_save_path:
        os.makedirs(opts.slot_save_path, exist_ok=True)

    runner = web.AppRunner(build_app(st), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    if not st.ik:
        await site.start()  # upstream serves HTTP (503s) while it loads

    buffers = startup_cfg.get("buffers_mib") or {}
    st.log_loading()
    st.buffer_lines("model", buffers.get("model", 1.0))
    await asyncio.sleep(float(startup_cfg.get("load_delay_s", 0.05)))
    if startup_cfg.get("hang_forever_loading"):
        await asyncio.Event().wait()
    if startup_cfg.get("load_fail"):
        st.log_load_failure()
        hard_exit(1)
    st.buffer_lines("kv", buffers.get("kv", 2.0))
    st.buffer_lines("compute", buffers.get("compute", 3.0))

    if st.ik:
        await site.start()  # ik: connections queued in the backlog are answered only now
    st.ready = True
    # Both forks install their SIGINT/SIGTERM handlers only after the model has loaded.
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, st.on_signal)
    if not startup_cfg.get("ignore_sigterm"):
        loop.add_signal_handler(signal.SIGTERM, st.on_signal)
    st.log_ready()
    crash_after = startup_cfg.get("crash_after_s")
    if crash_after is not None:
        loop.call_later(float(crash_after), hard_exit, 1)

    await st.stop_event.wait()
    # In-flight streams are cut off; llama-server returns 0 after a clean stop.
    st.log_shutdown()
    hard_exit(0)


def usage() -> str:
    return "usage: fake-llama-server -m MODEL [--host H] [--port N] [--alias NAME] [llama-server flags...]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # While "loading", SIGINT/SIGTERM must kill at once (the default action), not raise
    # KeyboardInterrupt; asyncio.run leaves SIGINT alone when it is not Python's default handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    opts = parse_args(args)
    try:
        cfg = load_config(opts.model_id)
    except ConfigError as exc:
        die(f"fake-llama-server: {exc}", 2)
    if cfg.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    flavor = cfg.get("flavor", "upstream")
    if flavor not in ("upstream", "ik"):
        die(f"fake-llama-server: unknown flavor {flavor!r}", 2)
    rejects = cfg.get("reject_flags", IK_DEFAULT_REJECTS if flavor == "ik" else [])
    for name in opts.flags:
        if name in rejects:
            sys.stdout.write(usage() + "\n")
            die(f"error: unknown argument: {name}")
    if "--version" in opts.flags:
        die("version: 1 (fake)\nbuilt with python for linux", 0)
    if "-h" in opts.flags or "--help" in opts.flags or "--usage" in opts.flags:
        sys.stdout.write(usage() + "\n")
        return 0
    if "--list-devices" in opts.flags:
        sys.stdout.write("Available devices:\n")
        return 0
    for stray in opts.strays:
        sys.stderr.write(f"fake-llama-server: ignoring stray argument {stray!r}\n")
    if not opts.model:
        die("error: the fake needs -m MODEL (a path; it need not exist)")
    record({"alias": opts.model_id, "event": "start", "argv": opts.argv, "pid": os.getpid()})
    asyncio.run(serve(opts, cfg))
    return 0  # not reached: serve() always leaves through hard_exit


if __name__ == "__main__":
    sys.exit(main())
