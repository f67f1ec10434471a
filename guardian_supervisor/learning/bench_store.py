"""Effect: the benchmark's files under data/. Blocking; callers run these in a thread.

- benchmark_state.json: the current (or last) run and which cells are finished (atomic writes).
- benchmark_history.jsonl: one JSON line per cell run, appended and fsynced. It is written
  *before* the state, so after a crash between the two the history is the truth: on load,
  cells of the run found in the history count as finished (`reconcile`).
- benchmark_records.json: each model's best figures and the record events (atomic writes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shared.atomic import read_json, write_json_atomic


class BenchStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    @property
    def state_path(self) -> Path:
        return self.data_dir / "benchmark_state.json"

    @property
    def history_path(self) -> Path:
        return self.data_dir / "benchmark_history.jsonl"

    @property
    def records_path(self) -> Path:
        return self.data_dir / "benchmark_records.json"

    def load_state(self) -> dict[str, Any] | None:
        state = read_json(self.state_path, None)
        return state if isinstance(state, dict) else None

    def save_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.state_path, state)

    def load_records(self) -> dict[str, Any]:
        records = read_json(self.records_path, None)
        if not isinstance(records, dict):
            records = {}
        records.setdefault("best", {})
        records.setdefault("events", [])
        return records

    def save_records(self, records: dict[str, Any]) -> None:
        write_json_atomic(self.records_path, records)

    def append_history(self, line: dict[str, Any]) -> None:
        """Append one line and fsync it. A line torn by a crash is closed off first, so the
        new line never glues onto it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n").encode()
        with open(self.history_path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read_history(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every readable line (a torn or corrupt one is skipped), optionally of one run."""
        try:
            raw = self.history_path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for text in raw.splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if isinstance(line, dict) and (run_id is None or line.get("run_id") == run_id):
                out.append(line)
        return out
