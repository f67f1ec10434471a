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

from guardian_supervisor.models import child_auth

LISTENING_RE = re.compile(rb"listening on (\S+)|HTTP server listening")
LOG_ROTATE_BYTES = 20 * 2**20
_PR_SET_PDEATHSIG = 1

# One long-lived thread forks every child: PDEATHSIG fires when the *thread* that forked
# exits, so it must not be a pool thread that may be retired.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardian-spawn")


def _die_with_parent() -> None:
    os.umask(0o077)  # slot files llama-server saves are private whatever our umask
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """Open `path` 0600 whatever the umask, refusing a symlink at it or at its directory
    (a link planted in data/logs must not redirect Guardian's writes)."""
    if path.parent.is_symlink():
        raise OSError(f"{path.parent} is a symbolic link; refusing to write there")
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.is_symlink():
        raise OSError(f"{path} is a symbolic link; refusing to use it")
    os.chmod(path, 0o700)


class _RotatingLog:
    """Append-only log that moves itself to `.log.1` past LOG_ROTATE_BYTES (one thread only).

    A failed write (ENOSPC, EIO) drops that line and counts it: the reader thread must live
    on, or nobody notices the server's exit.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = open_private(path)
        self._size = os.fstat(self._fd).st_size
        self.dropped = 0

    def write(self, data: bytes) -> None:
        try:
            if self._size + len(data) > LOG_ROTATE_BYTES or self._fd is None:
                self._reopen()
            assert self._fd is not None
            os.write(self._fd, data)
            self._size += len(data)
        except OSError:
            self.dropped += 1

    def _reopen(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            os.replace(self.path, self.path.with_suffix(".log.1"))
        self._fd = open_private(self.path)
        self._size = 0
        if self.dropped:
            self.write(f"=== {self.dropped} log lines dropped (write failed)\n".encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LoadError(Exception):
    """The server exited or never became ready; `timed_out` tells which."""

    def __init__(self, message: str, tail: list[str], timed_out: bool = False) -> None:
        super().__init__(message)
        self.tail = tail
        self.timed_out = timed_out


class Child:
    """One llama-server process and what it printed."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        ring_lines: int = 200,
        *,
        port: int | None = None,
        key_dir: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv  # as shown in status; the key-file flag is added only at spawn
        self.port = port
        self.key_dir = key_dir  # None: start without a key (only tests of the launcher itself)
        self.api_key: str | None = None
        self.key_file: Path | None = None
        self.cwd = cwd  # ik writes llama.log into its working directory
        self.log_path = log_path
        self.lines: deque[str] = deque(maxlen=ring_lines)
        # The reader thread appends while the loop copies: unguarded, a copy can fail with
        # "deque mutated during iteration" (seen failing a load under a swap-heavy load).
        self._lines_lock = threading.Lock()
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
        with self._lines_lock:
            return list(self.lines)[-n:]

    async def start(self, env: dict[str, str] | None = None) -> None:
        self.started_at = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(_spawner, self._spawn, env)
        if self.port is not None and self.api_key is not None and self.returncode is None:
            child_auth.KEYS[self.port] = self.api_key

    def _spawn(self, env: dict[str, str] | None) -> None:
        make_private_dir(self.log_path.parent)
        if self.cwd is not None:
            make_private_dir(self.cwd)
        log = _RotatingLog(self.log_path)
        log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
        argv = list(self.argv)
        if self.key_dir is not None:
            self.api_key = child_auth.new_key()
            self.key_file = child_auth.write_key_file(
                self.key_dir, f"{self.name}-{self.port}-{os.getpid()}.key", self.api_key
            )
            argv += ["--api-key-file", str(self.key_file)]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # upstream logs on stderr, ik on stdout: read both
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=child_auth.child_env(os.environ if env is None else env),
                cwd=self.cwd,
            )
        except OSError as e:
            log.write(f"=== cannot start: {e}\n".encode())
            log.close()
            self._remove_key_file()
            self._notify(self._forget_key)
            raise
        threading.Thread(
            target=self._read, args=(self.proc, log), name=f"log-{self.name}", daemon=True
        ).start()

    def _read(self, proc: subprocess.Popen[bytes], log: _RotatingLog) -> None:
        assert proc.stdout is not None
        try:
            with proc.stdout:
                for raw in proc.stdout:
                    log.write(raw)
                    line = raw.decode("utf-8", "replace").rstrip()
                    with self._lines_lock:
                        self.lines.append(line)
                    if LISTENING_RE.search(raw):
                        self._notify(self.wake.set)
        finally:  # whatever happened above, the exit must be noticed
            rc = proc.wait()
            log.write(f"=== exited with status {rc}\n".encode())
            log.close()
        self._remove_key_file()
        self._notify(lambda: self._exited(rc))

    def _notify(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(fn)

    def _remove_key_file(self) -> None:  # in a thread: file work stays off the loop
        if self.key_file is not None:
            with contextlib.suppress(OSError):
                self.key_file.unlink()

    def _forget_key(self) -> None:  # on the loop, which owns KEYS
        if self.port is not None and child_auth.KEYS.get(self.port) == self.api_key:
            del child_auth.KEYS[self.port]

    def _exited(self, rc: int) -> None:
        self._forget_key()
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
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), middlewares=(child_auth.add_child_key,)
    )


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
