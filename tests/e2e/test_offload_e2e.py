"""The offload flags Guardian's argv builder emits are accepted by both real llama-servers
(upstream's --n-cpu-moe, ik's -ot expert override), and the server answers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from guardian_supervisor.models.argv import Placement, build_argv
from shared.config import Backend, ModelConfig
from tests.e2e.test_estimate_vs_llama import LLAMA_SERVER, free_port, http

IK_SERVER = Path(sys.executable).with_name("llama-server-ik")
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("flavor", ["upstream", "ik"])
def test_offload_argv_is_accepted_by_the_real_server(tmp_path: Path, model_dir: Path, flavor: str) -> None:
    binary = IK_SERVER if flavor == "ik" else LLAMA_SERVER
    if binary is None or not Path(binary).exists():
        pytest.skip(f"no {flavor} llama-server here (make install)")
    cfg = ModelConfig("demo-b", model_dir / "demo-b.gguf", context=512)
    port = free_port()
    argv = build_argv(
        cfg,
        Backend(str(binary), flavor),
        binary=str(binary),
        port=port,
        placement=Placement(n_gpu_layers=3, n_cpu_moe=2),
    )
    assert ("--n-cpu-moe" in argv) == (flavor == "upstream") and ("-ot" in argv) == (flavor == "ik")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"{flavor} llama-server rejected {argv}:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            try:
                if http(url + "/health", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        # /tokenize, not /completion: ik's reply to a random-weight model's bytes can be
        # invalid UTF-8 (a 500 unrelated to offload); the model is loaded and serving.
        status, body = http(url + "/tokenize", {"content": "hi"}, timeout=30)
        assert status == 200 and body["tokens"], body
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
