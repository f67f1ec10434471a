"""catalog.* — what Ollama's /api/tags and /api/show report, read from the GGUF files.

The supervisor owns the model files, so it reads them: headers only, in a worker thread,
cached by (path, size, mtime) so a listing costs one stat per file once the cache is warm.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardian_supervisor.memory.gguf_info import SHOW_ARRAY_LIMIT, ModelInfo, file_digest, read_model_info
from guardian_supervisor.rpc.server import Connection, RpcServer, params_str
from shared.config import ModelConfig, canonical_name

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor

# Chat templates of reasoning models mention one of these (Qwen3, DeepSeek-R1, gpt-oss, ...).
_THINKING_RE = re.compile(r"enable_thinking|reasoning_content|<think>|\bthinking\b")
# llama-server's /infill needs the model's fill-in-the-middle tokens (new and old key names).
_FIM_KEYS = ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id")
_STOP_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


@dataclass(frozen=True)
class FileFacts:
    """One model file as last read: header facts, or why it could not be read."""

    size: int
    mtime_ns: int
    digest: str
    info: ModelInfo | None
    stops: tuple[str, ...]
    error: str | None = None


class GgufCache:
    """ModelInfo per file, re-read only when the file's size or mtime changes. Blocking: use
    from a worker thread (the catalog handlers go through asyncio.to_thread)."""

    def __init__(self) -> None:
        self._by_path: dict[Path, FileFacts] = {}

    def facts(self, path: Path) -> FileFacts:
        try:
            st = path.stat()
        except OSError as e:
            return FileFacts(0, 0, "0" * 64, None, (), f"cannot read {path}: {e.strerror or e}")
        cached = self._by_path.get(path)
        if cached is not None and (cached.size, cached.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return cached
        digest = file_digest(path)
        try:
            # Arrays kept once, to name the stop tokens; then trimmed so the cache stays small.
            full = read_model_info(path, keep_arrays=True)
        except (OSError, ValueError) as e:
            facts = FileFacts(st.st_size, st.st_mtime_ns, digest, None, (), str(e))
        else:
            trimmed = {
                k: ([] if isinstance(v, list) and len(v) > SHOW_ARRAY_LIMIT else v)
                for k, v in full.metadata.items()
            }
            info = dataclasses.replace(full, metadata=trimmed, arrays_kept=False)
            facts = FileFacts(st.st_size, st.st_mtime_ns, digest, info, _stop_words(full.metadata))
        self._by_path[path] = facts
        return facts

    def size_of(self, path: Path | None) -> int:
        if path is None:
            return 0
        try:
            return path.stat().st_size
        except OSError:
            return 0


def _stop_words(kv: dict[str, Any]) -> tuple[str, ...]:
    """The text of the end-of-sequence / end-of-turn tokens: the model's stop strings."""
    tokens = kv.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        return ()
    out: list[str] = []
    for key in _STOP_KEYS:
        tid = kv.get(key)
        if isinstance(tid, int) and 0 <= tid < len(tokens):
            text = tokens[tid]
            if isinstance(text, str) and text and text not in out:
                out.append(text)
    return tuple(out)


def rfc3339(epoch_ns: int) -> str:
    """UTC RFC3339 with microseconds: Go, JS and Python's fromisoformat all read it."""
    sec, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns // 1000:06d}Z"


def capabilities(cfg: ModelConfig, info: ModelInfo | None) -> list[str]:
    """Ollama capability names this model has as Guardian runs it."""
    if cfg.embeddings:
        return ["embedding"]  # llama-server started with --embeddings serves nothing else
    caps = ["completion"]
    template = info.chat_template if info else None
    if info is not None and info.has_tool_template:
        caps.append("tools")
    if info is not None and any(k in info.metadata for k in _FIM_KEYS):
        caps.append("insert")
    if cfg.mmproj is not None:
        caps.append("vision")
    if template and _THINKING_RE.search(template):
        caps.append("thinking")
    return caps


def details(cfg: ModelConfig, info: ModelInfo | None) -> dict[str, Any]:
    family = info.architecture if info else "unknown"
    families = [family, "clip"] if cfg.mmproj is not None else [family]
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": families,
        "parameter_size": info.parameter_size if info else "",
        "quantization_level": info.quantization_level if info else "",
    }


def parameter_pairs(cfg: ModelConfig, stops: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, value as Go's %#v prints it): num_ctx is the configured context."""
    return [("num_ctx", str(cfg.context))] + [("stop", json.dumps(s, ensure_ascii=False)) for s in stops]


def parameters_text(pairs: list[tuple[str, str]]) -> str:
    """Ollama's `parameters`: one `%-30s %#v` line per value (Continue reads num_ctx and stop)."""
    return "\n".join(f"{k:<30} {v}" for k, v in pairs)


def register(server: RpcServer, sup: Supervisor) -> None:
    cache = GgufCache()

    def models_yaml() -> Path:
        return sup.config.config_dir / "models.yaml"

    def tag_entries(models: list[ModelConfig]) -> list[dict[str, Any]]:
        out = []
        for cfg in models:  # blocking stats and reads: runs in a worker thread
            f = cache.facts(cfg.path)
            name = canonical_name(cfg.name)
            tag = {
                "name": name,
                "model": name,
                "modified_at": rfc3339(f.mtime_ns),
                "size": f.size + cache.size_of(cfg.mmproj),
                "digest": f.digest,
                "details": details(cfg, f.info),
            }
            out.append(
                {
                    "name": cfg.name,
                    "aliases": list(cfg.aliases),
                    "context": cfg.context,
                    "embeddings": cfg.embeddings,
                    "reranking": cfg.reranking,
                    "flavor": sup.config.backend_of(cfg).flavor,
                    "capabilities": capabilities(cfg, f.info),
                    "has_template": bool(f.info and f.info.chat_template),
                    "error": f.error,
                    "tag": tag,
                }
            )
        return out

    async def tags(params: dict[str, Any], conn: Connection) -> list[dict[str, Any]]:
        """Every configured model as Ollama's /api/tags lists it (`tag`), with what the proxy
        needs to serve it: name, aliases, context, embeddings, capabilities, has_template."""
        return await asyncio.to_thread(tag_entries, list(sup.config.models.values()))

    def show_body(cfg: ModelConfig, verbose: bool) -> dict[str, Any]:
        f = cache.facts(cfg.path)
        info = f.info
        where = models_yaml()
        served = f"served by Guardian (llama-server) as configured in {where}"
        model_info: dict[str, Any] = info.metadata_for_show(verbose) if info else {}
        license_id = model_info.get("general.license")
        license_text = (
            f"{license_id}\n\n(The model's license as its GGUF file names it; {served}.)"
            if isinstance(license_id, str) and license_id
            else f"The GGUF file names no license; see the model's source. This model is {served}."
        )
        pairs = parameter_pairs(cfg, f.stops)
        modelfile = (
            f"# '{cfg.name}' is {served}.\n# Change it in models.yaml (then: guardianctl reload);"
            f" ollama create/copy/delete do not apply.\nFROM {cfg.path}\n"
            + "".join(f"PARAMETER {k} {v}\n" for k, v in pairs)
        )
        body: dict[str, Any] = {
            "license": license_text,
            "modelfile": modelfile,
            "parameters": parameters_text(pairs),
            "template": (info.chat_template if info and info.chat_template else "{{ .Prompt }}"),
            "details": details(cfg, info),
            "model_info": model_info,
            "capabilities": capabilities(cfg, info),
            "modified_at": rfc3339(f.mtime_ns),
        }
        if verbose and info is not None:
            body["tensors"] = [
                {"name": t.name, "type": t.type_name, "shape": list(t.shape)} for t in info.tensors
            ]
        if f.error:
            body["error_reading_file"] = f.error
        return body

    async def show(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Ollama's /api/show for {model, verbose?}: model_info from the GGUF header,
        capabilities, parameters (num_ctx = the configured context, stop tokens), template."""
        name = params_str(params, "model")
        cfg = sup.scheduler.resolve(name)
        body = await asyncio.to_thread(show_body, cfg, bool(params.get("verbose")))
        return {"name": cfg.name, "context": cfg.context, "show": body}

    server.register("catalog.tags", tags)
    server.register("catalog.show", show)
