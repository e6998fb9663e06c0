"""The runners' fork server (actors/runtime/zygote.py) with several deployer copies on one data dir."""

from __future__ import annotations

from pathlib import Path

from actors.runtime.zygote import ForkServer
from runner_template.limits import WorkerLimits


async def fork(server: ForkServer, root: Path, name: str) -> int:
    """Fork one child (it is no runner: with an empty environment it exits at once); its pid."""
    cwd = root / name
    cwd.mkdir()
    pid, _ = await server.spawn(env={}, cwd=cwd, log=cwd / "runner.log", limits=WorkerLimits())
    return pid


async def test_a_copy_keeps_forking_runners_when_another_copy_on_the_same_directory_stops(tmp_path: Path) -> None:
    # Two deployer copies share one data dir, so one runners' directory: each starts its own fork server there.
    directory = tmp_path / ".zygote"
    first, second = ForkServer(directory), ForkServer(directory)
    try:
        assert await fork(first, tmp_path, "a") > 0
        assert await fork(second, tmp_path, "b") > 0
        await second.close()  # the second copy ended (its fork server follows its parent within a second)

        assert await fork(first, tmp_path, "c") > 0
    finally:
        await first.close()
        await second.close()
