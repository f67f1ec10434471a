"""Effect: spawn one llama-server, capture its log, notice readiness and exit, stop it.

Blocking work (fork/exec, reading the pipe, writing the log file) happens in threads so the
event loop never waits on it. Children run in their own process group and get SIGKILL if
the supervisor dies (PR_SET_PDEATHSIG), so a crashed supervisor leaves no server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

LISTENING_RE = re.compile(rb"listening on (\S+)|HTTP server listening")
LOG_ROTATE_BYTES = 20 * 2**20
_PR_SET_PDEATHSIG = 1

# One long-lived thread forks every child: PDEATHSIG fires when the *thread* that forked
# exits, so it must not be a pool thread that may be retired.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardian-spawn")


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _RotatingLog:
    """Append-only log that moves itself to `.log.1` past LOG_ROTATE_BYTES (one thread only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "ab", buffering=0)
        self._size = self._f.tell()

    def write(self, data: bytes) -> None:
        if self._size + len(data) > LOG_ROTATE_BYTES:
            self._f.close()
            os.replace(self.path, self.path.with_suffix(".log.1"))
            self._f = open(self.path, "ab", buffering=0)
            self._size = 0
        self._f.write(data)
        self._size += len(data)

    def close(self) -> None:
        self._f.close()


class LoadError(Exception):
    """The server exited or never became ready; `timed_out` tells which."""

    def __init__(self, message: str, tail: list[str], timed_out: bool = False) -> None:
        super().__init__(message)
        self.tail = tail
        self.timed_out = timed_out


class Child:
    """One llama-server process and what it printed."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, ring_lines: int = 200, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd  # ik writes llama.log into its working directory
        self.log_path = log_path
        self.lines: deque[str] = deque(maxlen=ring_lines)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.stop_requested = False
        self.started_at = 0.0
        self.exited = asyncio.Event()
        self.wake = asyncio.Event()  # set on the "listening" line or exit: re-poll /health now
        self.on_exit: Callable[[Child], None] | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def tail(self, n: int = 20) -> list[str]:
        return list(self.lines)[-n:]

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.started_at = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(_spawner, self._spawn, env)

    def _spawn(self, env: dict[str, str] | None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.cwd is not None:
            self.cwd.mkdir(parents=True, exist_ok=True)
        log = _RotatingLog(self.log_path)
        log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # upstream logs on stderr, ik on stdout: read both
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=env,
                cwd=self.cwd,
            )
        except OSError as e:
            log.write(f"=== cannot start: {e}\n".encode())
            log.close()
            raise
        threading.Thread(
            target=self._read, args=(self.proc, log), name=f"log-{self.name}", daemon=True
        ).start()

    def _read(self, proc: subprocess.Popen[bytes], log: _RotatingLog) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                log.write(raw)
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
                if LISTENING_RE.search(raw):
                    self._notify(self.wake.set)
            rc = proc.wait()
            log.write(f"=== exited with status {rc}\n".encode())
            log.close()
        self._notify(lambda: self._exited(rc))

    def _notify(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(fn)

    def _exited(self, rc: int) -> None:
        self.returncode = rc
        self.exited.set()
        self.wake.set()
        if self.on_exit is not None:
            self.on_exit(self)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM to the process group, SIGKILL after `grace_s`; returns the exit status."""
        self.stop_requested = True
        if self.proc is None:
            return None
        if not self.exited.is_set():
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.exited.wait(), grace_s)
            except TimeoutError:
                self._signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.exited.wait(), 10)
        return self.returncode

    def kill_now(self) -> None:
        """Last resort at interpreter exit."""
        self.stop_requested = True
        self._signal(signal.SIGKILL)


def llama_session() -> aiohttp.ClientSession:
    """HTTP to Guardian's own llama-servers. No keep-alive: a port may belong to a different
    server after the next swap, so a pooled connection could go stale or reach the wrong one."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def wait_ready(
    child: Child, base_url: str, session: aiohttp.ClientSession, timeout_s: float, poll_s: float
) -> None:
    """Poll /health until 200. A timeout per call counts as loading (ik accepts but stalls)."""
    deadline = time.monotonic() + timeout_s
    per_call = aiohttp.ClientTimeout(total=max(0.2, poll_s * 4))
    while True:
        if child.exited.is_set():
            raise LoadError(f"llama-server exited with status {child.returncode} while loading", child.tail())
        if time.monotonic() > deadline:
            raise LoadError(
                f"llama-server did not become ready within {timeout_s:g} s", child.tail(), timed_out=True
            )
        child.wake.clear()
        try:
            async with session.get(base_url + "/health", timeout=per_call) as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wake.wait(), poll_s)
