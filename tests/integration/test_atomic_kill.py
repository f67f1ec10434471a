"""Prove shared.atomic survives kill -9: the file is always the old or the new content.

A child process rewrites a multi-megabyte JSON state file in a loop, alternating two distinct
contents. We SIGKILL it at random moments, many times; after each kill the file must parse
and equal one of the two contents exactly, and at most one orphaned temp file may exist (the
one a kill interrupted; each writer sweeps its predecessor's on startup, as a daemon must).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
KILLS = 30  # at least this many kills...
MIN_MID_WRITE = 3  # ...and at least this many that interrupted a write in progress
DEADLINE_S = 15.0

# Big strings make the write+fsync phase (temp file present) a large share of each cycle,
# so a good fraction of kills land mid-write rather than mid-serialization.
_CONTENT = """
def content(which: str) -> dict:
    return {"which": which, "rows": [which + f"{i:07d}" * 120 for i in range(6000)]}
"""

_WRITER = (
    _CONTENT
    + """
import sys
from pathlib import Path
from shared.atomic import write_json_atomic

path = Path(sys.argv[1])
# Startup sweep: temp files left by a writer killed mid-write (no other writer runs now).
for stale in path.parent.glob(f".{path.name}.*.tmp"):
    stale.unlink(missing_ok=True)
docs = [content("A"), content("B")]
i = int(sys.argv[2])
print("ready", flush=True)
while True:
    write_json_atomic(path, docs[i % 2])
    i += 1
"""
)


def _contents() -> tuple[Any, Any]:
    ns: dict[str, Any] = {}
    exec(_CONTENT, ns)
    return ns["content"]("A"), ns["content"]("B")


def _temps(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.*.tmp"))


def test_atomic_write_survives_sigkill(tmp_path: Path) -> None:
    a, b = _contents()
    path = tmp_path / "state.json"
    path.write_text(json.dumps(a))  # a valid starting point, as after a first clean write
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random()
    seen = {"A": 0, "B": 0}
    mid_write = 0
    started = time.monotonic()

    n = 0
    while n < KILLS or (mid_write < MIN_MID_WRITE and time.monotonic() - started < DEADLINE_S):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            # Wait out start-up so the kill lands in the write loop (~40 ms per cycle).
            ready = proc.stdout.readline()
            assert ready == b"ready\n", proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(rng.uniform(0.0, 0.12))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe:
                    pipe.close()
        n += 1

        raw = path.read_bytes()
        doc = json.loads(raw)  # must parse: never a torn or empty file
        assert doc == a or doc == b, f"kill {n}: file holds neither content"
        seen[doc["which"]] += 1
        temps = _temps(path)
        assert len(temps) <= 1, f"kill {n}: temp files accumulate: {temps}"
        mid_write += len(temps)

    elapsed = time.monotonic() - started
    # Both contents seen: the writer really was rewriting the file between kills.
    assert seen["A"] and seen["B"], seen
    # Some kills must have hit the window where a temp file existed, or we proved little.
    assert mid_write >= MIN_MID_WRITE, f"only {mid_write} of {n} kills landed mid-write"
    assert elapsed < DEADLINE_S + 5, elapsed
