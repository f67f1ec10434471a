"""launcher.Child on real processes: private files, no symlink following, a full disk
does not kill the log reader (issue 13 items 7, 12, 13)."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pytest

from guardian_supervisor.models import launcher
from guardian_supervisor.models.launcher import Child

SCRIPT = "import sys, time\nfor i in range(50): print('line', i, flush=True)\ntime.sleep(0.1)\nsys.exit(3)\n"


async def _run(child: Child) -> int | None:
    await child.start()
    await child.exited.wait()
    return child.returncode


async def test_log_and_key_files_are_private_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        child = Child(
            "m", [sys.executable, "-c", SCRIPT], tmp_path / "logs" / "m.log", port=1, key_dir=tmp_path / "k"
        )
        assert await _run(child) == 3
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "logs" / "m.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    assert list((tmp_path / "k").iterdir()) == []  # the key file went with the process


async def test_symlinked_log_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "m.log").symlink_to(victim)
    with pytest.raises(OSError):
        await Child("m", [sys.executable, "-c", SCRIPT], tmp_path / "logs" / "m.log").start()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        await Child("m", [sys.executable, "-c", SCRIPT], tmp_path / "linked" / "m.log").start()
    assert victim.read_text() == "keep me" and not (tmp_path / "elsewhere" / "m.log").exists()


async def test_full_disk_drops_log_lines_but_the_exit_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:  # ENOSPC for the log file only
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(launcher.os, "write", full_disk)
    child = Child("m", [sys.executable, "-c", SCRIPT], tmp_path / "logs" / "m.log")
    assert await _run(child) == 3  # the reader thread lived on to see the exit
    assert child.tail(1) == ["line 49"]
