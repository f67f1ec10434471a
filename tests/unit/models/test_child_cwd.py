"""A child runs in the working directory it is given: ik writes llama.log there, not in ours."""

from __future__ import annotations

import asyncio

from guardian_supervisor.models.launcher import Child


async def test_child_writes_into_its_working_dir(tmp_path):
    run = tmp_path / "run" / "m"
    child = Child("m", ["/bin/sh", "-c", "echo hello > llama.log"], tmp_path / "logs" / "m.log", cwd=run)
    await child.start(None)
    await asyncio.wait_for(child.exited.wait(), 10)
    assert (run / "llama.log").read_text() == "hello\n"
    assert not (tmp_path / "llama.log").exists()
