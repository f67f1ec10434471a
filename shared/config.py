"""Guardian's configuration: settings.yaml and models.yaml as typed, immutable objects.

Relative paths resolve against the config directory's parent (so `etc/` next to `data/`).
Any problem raises ConfigError naming file, line and key.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared.yamlschema import ConfigError, Ctx, build_dataclass, load_yaml

KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1", "q6_0", "q8_KV")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(:[A-Za-z0-9._-]{1,64})?$")
Problem = tuple[str, str] | None


@dataclass(frozen=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 11434
    ui_host: str = "127.0.0.1"
    ui_port: int = 11437
    vram_limit_mb: int | None = None
    target: str | None = None  # the brief's single upstream address; kept for compatibility, unused
    max_body_mb: float = 24.0  # a chat with a few base64 images; bodies are parsed in memory
    max_messages: int = 4096  # per request: llama-server's template rendering is superlinear
    # Slowloris / fd exhaustion (shared/conn_guard.py); keep max_connections under LimitNOFILE.
    max_connections: int = 768
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides local ones (DNS rebinding)
    max_connections_per_ip: int = 256
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_s: float = 15.0
    request_queue_limit: int = 512
    # Streamed requests waiting for a model to load get progress (reasoning / thinking deltas)
    # instead of silence, as llama-swap's sendLoadingState; off by default, as Ollama sends none.
    loading_progress: bool = False
    # A streaming client that takes no bytes for this long is dropped and its lease released
    # (guardian_proxy/client_stream.py): a stuck reader must not block swaps or unloads.
    write_timeout_s: float = 30.0
    # What /api/version answers: clients gate features on it (tools refuse older versions).
    ollama_version: str = "0.35.1"

    def validate(self) -> Problem:
        for key in ("port", "ui_port"):
            if not 0 <= getattr(self, key) <= 65535:
                return key, "must be a TCP port between 0 and 65535"
        if self.write_timeout_s <= 0:
            return "write_timeout_s", "must be a positive number of seconds"
        if self.vram_limit_mb is not None and self.vram_limit_mb <= 0:
            return "vram_limit_mb", "must be a positive number of MiB"
        for key in ("max_connections", "max_connections_per_ip"):
            if getattr(self, key) < 1:
                return key, "must be a positive number of connections"
        for key in ("header_timeout_s", "body_timeout_s", "keepalive_s"):
            if not 0 < getattr(self, key) <= 3600:
                return key, "must be between 0 and 3600 seconds"
        if self.max_messages < 1:
            return "max_messages", "must be a positive number of messages per request"
        if not re.fullmatch(r"\d+\.\d+\.\d+", self.ollama_version):
            # clients parse it as numbers (Open WebUI: a `+build` or `-rc` suffix breaks them)
            return "ollama_version", "must be a dotted version of three numbers, like 0.35.1"
        return None


@dataclass(frozen=True)
class SupervisorSettings:
    socket: Path = Path("run/supervisor.sock")
    # Group for a read-only status socket beside it (supervisor-status.sock); None: none.
    status_group: str | None = None
    data_dir: Path = Path("data")
    port_base: int = 11440
    stop_grace_s: float = 10.0
    health_poll_ms: int = 25
    max_queue: int = 256
    swap_fairness_s: float = 2.0
    # A READY llama-server with requests in flight that answers no /health for this long is
    # killed and started again (SIGSTOP, deadlock); 0 turns the watchdog off.
    health_watchdog_s: float = 60.0
    log_ring_lines: int = 200
    keep_alive: str | float = "5m"

    def validate(self) -> Problem:
        if not 1024 <= self.port_base <= 65000:
            return "port_base", "must be between 1024 and 65000"
        if not 1 <= self.health_poll_ms <= 50:
            return "health_poll_ms", "must be between 1 and 50 ms"
        if self.swap_fairness_s < 0:
            return "swap_fairness_s", "must be 0 or more seconds"
        if self.health_watchdog_s != 0 and self.health_watchdog_s < 1:
            return "health_watchdog_s", "must be 0 (off) or at least 1 second"
        return None


@dataclass(frozen=True)
class Backend:
    binary: str
    flavor: Literal["ik", "upstream"]
    extra_args: str = ""

    def validate(self) -> Problem:
        return _check_shell_words("extra_args", self.extra_args)


@dataclass(frozen=True)
class Schedule:
    start_hour: int = 4
    end_hour: int = 11
    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")

    def validate(self) -> Problem:
        for key in ("start_hour", "end_hour"):
            if not 0 <= getattr(self, key) <= 24:
                return key, "must be an hour from 0 to 24"
        bad = [d for d in self.days if d not in DAYS]
        if bad:
            return "days", f"unknown day {bad[0]!r}; use {', '.join(DAYS)}"
        return None


@dataclass(frozen=True)
class BenchmarkSettings:
    schedule: Schedule = field(default_factory=Schedule)
    contexts: tuple[int, ...] = (4096, 16384, 32768)
    batch_sizes: tuple[int, ...] = (512, 2048)
    ubatch_sizes: tuple[int, ...] = (512,)
    prompt_tokens: int = 512
    gen_tokens: int = 128
    repetitions: int = 3
    idle_minutes: float = 10


@dataclass(frozen=True)
class Tier:
    min_size_mb: float
    timeout_seconds: float
    load_timeout_seconds: float | None = None


@dataclass(frozen=True)
class Timeouts:
    tiers: dict[str, Tier] = field(default_factory=dict)
    default_timeout_seconds: float = 600.0
    default_load_timeout_seconds: float = 300.0


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


@dataclass(frozen=True)
class SimulatedGpu:
    name: str
    total_mb: int
    used_mb: int = 0  # held by processes that are not Guardian's (the brief's Frigate)


@dataclass(frozen=True)
class GpuSettings:
    mode: Literal["auto", "nvml", "simulated", "none"] = "auto"
    simulated: tuple[SimulatedGpu, ...] = ()
    reserve_mb: int = 256  # kept free on every GPU for the driver and other processes
    overhead_mb: int | None = None  # per-GPU overhead (CUDA context); unset: estimate default
    release_timeout_s: float = 5.0  # after a stop, wait at most this long for memory to come back
    ram_gbs: float | None = None  # RAM read bandwidth for offload speed; unset: measured once

    def validate(self) -> Problem:
        if self.mode == "simulated" and not self.simulated:
            return "simulated", "mode is simulated but no GPUs are listed under simulated"
        if self.ram_gbs is not None and self.ram_gbs <= 0:
            return "ram_gbs", "must be a positive number of GB/s (or left unset to measure it)"
        return None


@dataclass(frozen=True)
class AuthSettings:
    required: bool | None = None  # None: required once any API key has existed
    isolate_cache: bool = (
        False  # keyed requests get no prompt-cache reuse (guardian_proxy/cache_isolation.py)
    )


@dataclass(frozen=True)
class SessionSettings:
    carry_over: bool = True  # save a model's conversations (KV slots) before it stops, restore after
    max_mb_per_model: int = 4096  # slot files beyond this are removed, least recently used first
    # Upstream keeps only the window of a sliding-window model's (Gemma 3, gpt-oss) SWA layers,
    # so a restored slot cannot be reused: carry-over runs such models with --swa-full when
    # the full cache costs at most this much more (a model's swa_full: on/off overrides).
    swa_full_max_mb: int = 1024


@dataclass(frozen=True)
class MaintenanceSettings:
    service_command: tuple[str, ...] = ("systemctl",)  # run as [*service_command, stop|start, unit]
    enabled: bool = True  # may the window start the benchmark on its own


@dataclass(frozen=True)
class OptimizerSettings:
    enabled: bool = True  # fill unset num_ctx / batch settings from benchmark records
    min_samples: int = 5  # prompt lengths seen before a learned context is used


@dataclass(frozen=True)
class Settings:
    proxy: ProxySettings = field(default_factory=ProxySettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    backends: dict[str, Backend] = field(
        default_factory=lambda: {
            "ik_fork": Backend("llama-server-ik", "ik"),
            "official": Backend("llama-server", "upstream"),
        }
    )
    default_backend: str = "ik_fork"
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    services_to_stop: tuple[str, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    gpus: GpuSettings = field(default_factory=GpuSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    max_loaded_models: int = 3  # several models resident at once when they fit in memory

    def validate(self) -> Problem:
        if self.default_backend not in self.backends:
            return "default_backend", f"no backend named {self.default_backend!r} under backends"
        if self.max_loaded_models < 1:
            return "max_loaded_models", "must be at least 1"
        return None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path
    context: int = 4096
    ngl: int = 99
    kv_type: str = "f16"
    backend: str | None = None
    tensor_split: str | tuple[float, ...] | None = None
    extra_args: str = ""
    embeddings: bool = False
    pooling: Literal["none", "mean", "cls", "last", "rank"] | None = None  # --pooling for embeddings
    reranking: bool = False  # serve /v1/rerank (upstream llama-server's --rerank; ik has no reranker)
    parallel: int = 1
    threads: int | None = None
    batch_size: int | None = None
    ubatch_size: int | None = None
    flash_attn: Literal["auto", "on", "off"] = "auto"
    pinned: bool = False
    keep_alive: str | float | None = None
    cpu_offload: bool = False
    # auto: a model too big for the GPUs runs partly on the CPU (-ngl N, or --n-cpu-moe N for
    # MoE experts) within the RAM budget; strict: refuse it unless cpu_offload is true.
    offload: Literal["auto", "strict"] = "auto"
    # --swa-full (upstream): a full-size cache on sliding-window layers. auto: when carry-over
    # is on and it costs at most sessions.swa_full_max_mb more (memory/planner.py choose_swa_full).
    swa_full: Literal["auto", "on", "off"] = "auto"
    mmproj: Path | None = None
    aliases: tuple[str, ...] = ()
    # A llama-server built-in template name (`--chat-template`, e.g. gemma, chatml, llama3)
    # for models whose GGUF carries none: base models such as the embedded Gemma 3 270M.
    chat_template: str | None = None
    priority: int = 0  # breaks ties between models with waiters; higher goes first

    def validate(self) -> Problem:
        if self.chat_template is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.chat_template):
            return (
                "chat_template",
                "must be a llama-server built-in template name such as gemma, chatml or llama3",
            )
        if not self.path.is_file():
            return "path", f"model file not found: {self.path}"
        if self.context < 64:
            return "context", "must be at least 64 tokens"
        if self.kv_type not in KV_TYPES:
            return "kv_type", f"unknown cache type {self.kv_type!r}; use one of {', '.join(KV_TYPES)}"
        if self.parallel < 1:
            return "parallel", "must be at least 1"
        try:
            split = self.split
        except ValueError:
            return (
                "tensor_split",
                f"expected comma-separated proportions like '0.55,0.45', got {self.tensor_split!r}",
            )
        if split is not None and (not split or any(x < 0 for x in split) or sum(split) <= 0):
            return "tensor_split", "proportions must be non-negative and not all zero"
        if self.mmproj is not None and not self.mmproj.is_file():
            return "mmproj", f"projector file not found: {self.mmproj}"
        return _check_shell_words("extra_args", self.extra_args)

    @property
    def split(self) -> tuple[float, ...] | None:
        """tensor_split as numbers: the brief writes it '0.55,0.45', a list works too."""
        if self.tensor_split is None or self.tensor_split == "":
            return None
        if isinstance(self.tensor_split, tuple):
            return self.tensor_split
        return tuple(float(x) for x in re.split(r"[,/]", self.tensor_split) if x.strip())

    @property
    def extra_argv(self) -> list[str]:
        return shlex.split(self.extra_args)


@dataclass(frozen=True)
class Config:
    """Everything the daemons read from the config directory."""

    config_dir: Path
    settings: Settings
    models: dict[str, ModelConfig]

    @property
    def base_dir(self) -> Path:
        return self.config_dir.parent

    @property
    def data_dir(self) -> Path:
        return self.settings.supervisor.data_dir

    @property
    def socket_path(self) -> Path:
        return self.settings.supervisor.socket

    @property
    def status_socket_path(self) -> Path:
        return status_socket_path(self.settings.supervisor.socket)

    def backend_of(self, model: ModelConfig) -> Backend:
        return self.settings.backends[model.backend or self.settings.default_backend]

    def backend_name(self, model: ModelConfig) -> str:
        return model.backend or self.settings.default_backend


def _check_shell_words(key: str, text: str) -> Problem:
    try:
        shlex.split(text)
    except ValueError as e:
        return key, f"cannot split like a shell would: {e}"
    return None


def default_config_dir() -> Path:
    return Path(os.environ.get("GUARDIAN_CONFIG_DIR", "etc")).resolve()


def status_socket_path(socket: Path) -> Path:
    """The read-only status socket that sits beside the admin socket."""
    return socket.with_name("supervisor-status.sock")


def load_settings(config_dir: Path) -> Settings:
    """settings.yaml alone (guardianctl needs only the socket path, even if models.yaml is bad)."""
    config_dir = Path(config_dir).resolve()
    settings_file = config_dir / "settings.yaml"
    node = load_yaml(settings_file) if settings_file.exists() else None
    return build_dataclass(Settings, node, Ctx(settings_file, config_dir.parent, "", 1))


def load_config(config_dir: Path) -> Config:
    """Read settings.yaml (optional) and models.yaml (required) from `config_dir`."""
    config_dir = Path(config_dir).resolve()
    base = config_dir.parent
    settings = load_settings(config_dir)
    models_file = config_dir / "models.yaml"
    if not models_file.exists():
        raise ConfigError(
            models_file, None, "", "file not found; create it (see etc/models.yaml in Guardian's source)"
        )
    root = load_yaml(models_file)
    top = Ctx(models_file, base, "", 1)
    if root is None:
        root = {}
    if not isinstance(root, dict):
        raise top.error("expected a mapping with a 'models' key")
    for key in root:
        if key != "models":
            raise top.child(str(key), root[key], root).error("unknown key (known keys here: models)")
    entries = root.get("models") or {}
    models_ctx = top.child("models", entries, root)
    if not isinstance(entries, dict):
        raise models_ctx.error("expected a mapping of model name to settings")
    models: dict[str, ModelConfig] = {}
    seen_names: dict[str, str] = {}
    for raw_name, node in entries.items():
        name = str(raw_name)
        ctx = models_ctx.child(name, node, entries)
        if not MODEL_NAME_RE.fullmatch(name):
            raise ctx.error("model names use letters, digits, '.', '_', '-' and one optional ':tag'")
        model = build_dataclass(ModelConfig, node, ctx, extra={"name": name})
        backend = model.backend or settings.default_backend
        if backend not in settings.backends:
            where = (
                models_ctx.child(name, node, entries).child("backend", None, node) if model.backend else ctx
            )
            raise where.error(
                f"no backend named {backend!r} in settings.yaml backends ({', '.join(settings.backends)})"
            )
        for alias in (name, *model.aliases):
            canon = canonical_name(alias)
            if canon in seen_names:
                raise ctx.error(f"name {alias!r} is already used by model {seen_names[canon]!r}")
            seen_names[canon] = name
        models[name] = model
    return Config(config_dir=config_dir, settings=settings, models=models)


def canonical_name(name: str) -> str:
    """Ollama names default to the tag ':latest'; compare names in that form."""
    return name if ":" in name else f"{name}:latest"


def resolve_model(config: Config, requested: str) -> ModelConfig | None:
    """Find a model by its name or alias, with or without ':latest'."""
    if requested in config.models:
        return config.models[requested]
    want = canonical_name(requested)
    for model in config.models.values():
        if canonical_name(model.name) == want or any(canonical_name(a) == want for a in model.aliases):
            return model
    return None


def timeouts_for(config: Config, model: ModelConfig) -> tuple[float, float]:
    """(request timeout, load timeout) in seconds from the tier matching the model's file size."""
    size_mb = model.path.stat().st_size / 2**20 if model.path.exists() else 0.0
    return tier_timeouts(config.settings.timeouts, size_mb)


def tier_timeouts(timeouts: Timeouts, size_mb: float) -> tuple[float, float]:
    """Pick the tier with the largest min_size_mb not above the size; defaults otherwise."""
    best: Tier | None = None
    for tier in timeouts.tiers.values():
        if tier.min_size_mb <= size_mb and (best is None or tier.min_size_mb > best.min_size_mb):
            best = tier
    if best is None:
        return timeouts.default_timeout_seconds, timeouts.default_load_timeout_seconds
    return best.timeout_seconds, best.load_timeout_seconds or best.timeout_seconds
