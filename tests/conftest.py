"""Shared fixtures: tiny real models, the real llama-server, Guardian under test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guardian_supervisor.demo_models import DEMO_MODELS, TinySpec, write_tiny_llama
from tests.harness import Guardian, llama_server_binary


@pytest.fixture(scope="session")
def llama_bin() -> str:
    path = llama_server_binary()
    assert Path(path).exists(), f"llama-server not found at {path}: run 'make install'"
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models plus a few sizes for placement tests, generated once per session."""
    d = tmp_path_factory.mktemp("models")
    for name, spec in DEMO_MODELS.items():
        write_tiny_llama(d / f"{name}.gguf", spec)
    write_tiny_llama(
        d / "tiny-c.gguf",
        TinySpec(n_layer=2, n_embd=128, n_head=4, n_head_kv=4, n_ff=256, seed=3, name="tiny-c"),
    )
    return d


@pytest.fixture
def guardian_factory(tmp_path: Path, model_dir: Path, llama_bin: str) -> Iterator[Callable[..., Guardian]]:
    """Make a Guardian with the given models (name → models.yaml entry); cleaned up after."""
    made: list[Guardian] = []

    def make(
        models: dict[str, dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        start: str | None = "guardian",
    ) -> Guardian:
        if models is None:
            models = {
                "demo-a": {"path": str(model_dir / "demo-a.gguf"), "context": 1024},
                "demo-b": {"path": str(model_dir / "demo-b.gguf"), "context": 1024},
            }
        g = Guardian(tmp_path / f"g{len(made)}", models, settings, env)
        made.append(g)
        if start:
            g.start(start)
        return g

    yield make
    for g in made:
        g.close()
