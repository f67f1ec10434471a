"""GET /metrics: Prometheus text format (prometheus_client), counted cheaply on the hot path.

Per request the middleware makes one `RequestStats`; the relay code fills it through a
context variable (model, queue wait, upstream time, first byte, final token counts) without
touching any chunk beyond one assignment. The supervisor's figures (model states, loads,
evictions, memory, sessions, benchmark) are read over the RPC (`metrics.snapshot`) at
scrape time by a custom collector: no second HTTP server, nothing cached between scrapes.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from guardian_proxy.auth import get_api_key
from guardian_proxy.errors_http import api_error

if TYPE_CHECKING:
    from guardian_proxy.supervisor_link import SupervisorLink

METRICS_SCOPE = "metrics"  # a key scoped to this name may read /metrics and nothing else
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


@dataclass
class RequestStats:
    """What one request did; filled in by whoever knows (relay, lease), read once at the end."""

    t0: float
    model: str = ""
    acquire_s: float = 0.0  # the acquire RPC: queue + load, as the proxy saw it
    waited_s: float | None = None
    upstream_s: float = 0.0
    first_byte: float | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    prompt_ms: float | None = None
    predicted_ms: float | None = None
    # The client has its stream's end marker (`data: [DONE]`): a hang-up after it is a client
    # done reading (the OpenAI SDK closes at [DONE]), not one that went away mid-answer.
    delivered: bool = False


CURRENT: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar(
    "guardian_request", default=None
)


def current() -> RequestStats | None:
    return CURRENT.get()


def note_first_byte() -> None:
    s = CURRENT.get()
    if s is not None and s.first_byte is None:
        s.first_byte = time.perf_counter()


def note_delivered() -> None:
    s = CURRENT.get()
    if s is not None:
        s.delivered = True


def note_usage(obj: Any) -> None:
    """Token counts from llama-server's final object (`timings`, else OpenAI's `usage`)."""
    s = CURRENT.get()
    if s is None or not isinstance(obj, Mapping):
        return
    t, u = obj.get("timings"), obj.get("usage")
    if isinstance(t, Mapping) and t:
        s.prompt_tokens = _int(t.get("prompt_n")) + _int(t.get("cache_n"))
        s.generated_tokens = _int(t.get("predicted_n"))
        s.cached_tokens = _int(t.get("cache_n"))
        s.prompt_ms, s.predicted_ms = _float(t.get("prompt_ms")), _float(t.get("predicted_ms"))
    elif isinstance(u, Mapping) and u:
        s.prompt_tokens = _int(u.get("prompt_tokens"))
        s.generated_tokens = _int(u.get("completion_tokens"))


def note_usage_in_sse_tail(tail: bytes) -> None:
    """Find the last `data:` event that carries timings or usage in the stream's last bytes."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data:") and (b'"timings"' in line or b'"usage"' in line):
            try:
                note_usage(json.loads(line[5:]))
            except ValueError:
                continue
            return


_DECODER = json.JSONDecoder()


def note_usage_in_json_tail(body: bytes) -> None:
    """Token counts from a whole JSON answer without parsing all of it (an embeddings answer
    can be megabytes): llama-server puts `timings`/`usage` last, so decode just that object."""
    for key in (b'"timings":', b'"usage":'):
        at = body.rfind(key)
        if at < 0:
            continue
        try:
            text = body[at + len(key) :].decode("utf-8", "replace").lstrip()
            obj, _ = _DECODER.raw_decode(text)
        except ValueError:
            continue
        note_usage({key.strip(b'":').decode(): obj})
        return


def _int(x: Any) -> int:
    return int(x) if isinstance(x, int | float) and not isinstance(x, bool) else 0


def _float(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


@dataclass(frozen=True)
class Finished:
    """A finished request as the dashboard lists it."""

    at: float
    model: str
    route: str
    status: int
    duration_s: float
    ttft_s: float | None
    prompt_tokens: int
    generated_tokens: int
    tokens_per_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def summarize(s: RequestStats, route: str, status: int, t_end: float) -> Finished:
    """Pure: a request's figures (TTFT: first byte streamed, else queue + prompt time)."""
    duration = t_end - s.t0
    ttft: float | None = None
    if s.first_byte is not None:
        ttft = s.first_byte - s.t0
    elif s.prompt_ms is not None:
        ttft = s.acquire_s + s.prompt_ms / 1000
    tps = None
    if s.generated_tokens and s.predicted_ms:
        tps = s.generated_tokens / (s.predicted_ms / 1000)
    elif s.generated_tokens and s.first_byte is not None and t_end > s.first_byte:
        tps = s.generated_tokens / (t_end - s.first_byte)
    return Finished(
        time.time(), s.model, route, status, duration, ttft, s.prompt_tokens, s.generated_tokens, tps
    )


@dataclass(frozen=True)
class _Bound:
    """One (model, route, status)'s children of every family, bound once."""

    requests: Any
    duration: Any
    queue_wait: Any
    prompt_tokens: Any
    generated_tokens: Any
    cache_tokens: Any
    ttft: Any
    added: Any


class ProxyMetrics:
    """The proxy's own families plus the supervisor collector, in a registry of its own."""

    def __init__(self, link: SupervisorLink) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "guardian_requests",
            "Requests answered, by model, route and status",
            ["model", "route", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "guardian_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "guardian_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.cache_tokens = Counter(
            "guardian_cache_tokens_reused",
            "Prompt tokens served from llama-server's KV cache",
            ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            "guardian_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "guardian_request_duration_seconds",
            "Request duration, arrival to last byte",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.added = Histogram(
            "guardian_proxy_added_seconds",
            "Time the proxy itself added: duration less queue/load wait and llama-server time",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "guardian_queue_wait_seconds",
            "Time a request waited for its model (queue and load)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recent: deque[Finished] = deque(maxlen=50)  # for the dashboard
        self._children: dict[tuple[str, str, int], _Bound] = {}
        self.collector = SupervisorCollector()
        r.register(self.collector)
        self.link = link

    def _bound(self, model: str, route: str, status: int) -> _Bound:
        # labels() costs a few µs each; the (model, route, status) set is small, so bind once.
        key = (model, route, status)
        b = self._children.get(key)
        if b is None:
            per_model = (
                (
                    self.queue_wait.labels(model),
                    self.prompt_tokens.labels(model),
                    self.generated_tokens.labels(model),
                    self.cache_tokens.labels(model),
                    self.ttft.labels(model),
                    self.added.labels(route),
                )
                if model  # no empty-model series for requests that named none
                else (None,) * 6
            )
            b = self._children[key] = _Bound(
                self.requests.labels(model, route, str(status)),
                self.duration.labels(model, route),
                *per_model,
            )
        return b

    def observe(self, s: RequestStats, route: str, status: int) -> Finished:
        f = summarize(s, route, status, time.perf_counter())
        b = self._bound(s.model, route, status)
        b.requests.inc()
        b.duration.observe(f.duration_s)
        if s.model:
            if s.waited_s is not None:
                b.queue_wait.observe(s.waited_s)
            if s.prompt_tokens:
                b.prompt_tokens.inc(s.prompt_tokens)
            if s.generated_tokens:
                b.generated_tokens.inc(s.generated_tokens)
            if s.cached_tokens:
                b.cache_tokens.inc(s.cached_tokens)
            if f.ttft_s is not None:
                b.ttft.observe(f.ttft_s)
            b.added.observe(max(f.duration_s - s.acquire_s - s.upstream_s, 0.0))
            self.recent.append(f)
        return f

    async def render(self) -> bytes:
        """Read the supervisor's snapshot (async), then let prometheus_client write the text."""
        try:
            self.collector.snapshot = await self.link.call("metrics.snapshot")
            self.collector.error = None
        except Exception as e:  # a scrape still answers: the proxy's own figures and up=0
            self.collector.snapshot, self.collector.error = None, str(e)
        return await asyncio.to_thread(generate_latest, self.registry)


def _hist(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


class SupervisorCollector:
    """Turns the last `metrics.snapshot` into guardian_* families at scrape time."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] | None = None
        self.error: str | None = None

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        up = GaugeMetricFamily("guardian_supervisor_up", "1 if the supervisor answered this scrape")
        up.add_metric([], 1.0 if snap is not None else 0.0)
        yield up
        if snap is None:
            return
        yield from _model_families(snap)
        yield from _memory_families(snap.get("memory") or {})
        yield from _bench_families(snap.get("bench") or {})


def _model_families(snap: dict[str, Any]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "guardian_model_state", "1 for the state each model is in", labels=["model", "state"]
    )
    inflight = GaugeMetricFamily("guardian_inflight_requests", "Requests being served", labels=["model"])
    queued = GaugeMetricFamily("guardian_queue_depth", "Requests waiting for the model", labels=["model"])
    oldest = GaugeMetricFamily(
        "guardian_queue_oldest_wait_seconds", "Wait of the oldest queued request", labels=["model"]
    )
    ctx = GaugeMetricFamily(
        "guardian_model_context_tokens", "Context per slot of the running server", labels=["model"]
    )
    pinned = GaugeMetricFamily("guardian_model_pinned", "1 if the model is pinned", labels=["model"])
    loads = CounterMetricFamily("guardian_model_loads", "Successful model loads", labels=["model"])
    failures = CounterMetricFamily("guardian_model_load_failures", "Loads that failed", labels=["model"])
    load_s = _hist("guardian_model_load_seconds", "Time from launch to ready", ["model"])
    restores = CounterMetricFamily("guardian_session_restores", "KV-cache session restores", labels=["model"])
    restored = CounterMetricFamily(
        "guardian_session_restored_tokens",
        "Tokens brought back by session restores (not recomputed)",
        labels=["model"],
    )
    for m in snap.get("models", []):
        name = m["name"]
        for s in snap.get("states", []):
            state.add_metric([name, s], 1.0 if m["state"] == s else 0.0)
        inflight.add_metric([name], m.get("inflight", 0))
        queued.add_metric([name], m.get("queued", 0))
        oldest.add_metric([name], m.get("oldest_wait_s", 0.0))
        ctx.add_metric([name], m.get("ctx") or 0)
        pinned.add_metric([name], 1.0 if m.get("pinned") else 0.0)
        loads.add_metric([name], m.get("loads", 0))
        failures.add_metric([name], m.get("load_failures", 0))
        restores.add_metric([name], m.get("restores", 0))
        restored.add_metric([name], m.get("restored_tokens", 0))
        h = m.get("load_seconds")
        if h:
            buckets = [(repr(float(le)), c) for le, c in zip(h["buckets"], h["cumulative"], strict=True)]
            load_s.add_metric([name], [*buckets, ("+Inf", h["count"])], h["sum"])
    yield from (state, inflight, queued, oldest, ctx, pinned, loads, failures, load_s, restores, restored)
    total_q = GaugeMetricFamily("guardian_queue_depth_total", "Requests waiting for any model")
    total_q.add_metric([], snap.get("queued", 0))
    yield total_q
    stops = CounterMetricFamily(
        "guardian_model_stops",
        "Model stops by reason (evicted, idle, unload, config, benchmark, ...)",
        labels=["model", "reason"],
    )
    for s in snap.get("stops", []):
        stops.add_metric([s["model"], s["reason"]], s["count"])
    yield stops
    evictions = CounterMetricFamily(
        "guardian_model_evictions", "Models stopped to make room for another", labels=["model"]
    )
    for s in snap.get("stops", []):
        if s["reason"] == "evicted":
            evictions.add_metric([s["model"]], s["count"])
    yield evictions
    saves = CounterMetricFamily(
        "guardian_session_saves", "KV-cache slot saves (carry-over or named)", labels=["model", "kind"]
    )
    for s in snap.get("session_saves", []):
        saves.add_metric([s["model"], s["kind"]], s["count"])
    yield saves


def _memory_families(mem: dict[str, Any]) -> Iterator[Metric]:
    mib = 2**20
    total = GaugeMetricFamily("guardian_gpu_memory_total_bytes", "GPU memory", labels=["gpu", "name"])
    free = GaugeMetricFamily("guardian_gpu_memory_free_bytes", "GPU memory free", labels=["gpu"])
    other = GaugeMetricFamily(
        "guardian_gpu_memory_other_bytes", "GPU memory held by other processes", labels=["gpu"]
    )
    by_model = GaugeMetricFamily(
        "guardian_gpu_memory_model_bytes",
        "GPU memory planned for each resident model",
        labels=["gpu", "model"],
    )
    for g in mem.get("gpus", []):
        gpu = str(g["index"])
        total.add_metric([gpu, g.get("name", "")], g["total_mib"] * mib)
        free.add_metric([gpu], g["free_mib"] * mib)
        other.add_metric([gpu], g["other_mib"] * mib)
        for model, v in (g.get("models") or {}).items():
            by_model.add_metric([gpu, model], v * mib)
    est = GaugeMetricFamily(
        "guardian_model_memory_estimate_bytes", "Estimated memory of a resident model", labels=["model"]
    )
    meas = GaugeMetricFamily(
        "guardian_model_memory_measured_bytes", "Measured memory of a resident model", labels=["model"]
    )
    for model, p in (mem.get("placements") or {}).items():
        est.add_metric([model], p.get("estimate_mib", 0) * mib)
        if p.get("measured_mib") is not None:
            meas.add_metric([model], p["measured_mib"] * mib)
    yield from (total, free, other, by_model, est, meas)


def _bench_families(b: dict[str, Any]) -> Iterator[Metric]:
    cells = GaugeMetricFamily(
        "guardian_benchmark_cells", "Cells of the current or last run by status", labels=["status"]
    )
    for status, n in (b.get("cells") or {}).items():
        cells.add_metric([status], n)
    progress = GaugeMetricFamily(
        "guardian_benchmark_progress_ratio", "Cells done / total of the current or last run"
    )
    progress.add_metric([], (b.get("done", 0) / b["total"]) if b.get("total") else 0.0)
    records = CounterMetricFamily("guardian_benchmark_record_events", "New records set by benchmark cells")
    records.add_metric([], b.get("record_events", 0))
    best = GaugeMetricFamily(
        "guardian_benchmark_best_tokens_per_second",
        "Best speed measured per model and metric",
        labels=["model", "metric"],
    )
    for r in b.get("best", []):
        best.add_metric([r["model"], r["metric"]], r["value"])
    yield from (cells, progress, records, best)


def _route_of(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"  # bounded: never the raw path of a 404
    return info.route.resource.canonical if info.route.resource else "unmatched"


def make_metrics_middleware(metrics: ProxyMetrics) -> Middleware:
    """Counts every request; sets the context the relay code fills in."""

    @web.middleware
    async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        s = RequestStats(time.perf_counter())
        token = CURRENT.set(s)
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            # the client went away (nginx's number for it), unless it had the whole answer
            status = 200 if s.delivered else 499
            raise
        finally:
            CURRENT.reset(token)
            metrics.observe(s, _route_of(request), status)

    return metrics_middleware


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics. With auth on, the key must allow every model or name 'metrics' in its scope."""
    from guardian_proxy.context import ctx_of

    record = get_api_key(request)
    if record is not None and not record.allows(METRICS_SCOPE):
        return api_error(
            request,
            403,
            "this API key may not read /metrics: use a key for all models, or create one with "
            "'guardianctl keys create NAME --models metrics'",
        )
    body = await ctx_of(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
