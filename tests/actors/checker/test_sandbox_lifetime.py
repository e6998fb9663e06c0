"""A checker's sandbox dies with the checker, even one killed by SIGKILL (issue 17, point 3): no process of it
survives, and the temp directory of its worker sockets, which a killed process cannot remove, is removed when
the next checker starts. The same for the development-only unsandboxed worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runner_template.sandbox import bwrap_path
from tests.conftest import Stack, eventually


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir of the test's own with a short path: a worker's socket path must fit a Unix socket address
    (108 bytes), which pytest's tmp_path may not leave room for."""
    with tempfile.TemporaryDirectory(prefix="bmms-t-") as short:
        yield Path(short)


def process_identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time) of a live process (not a zombie), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else (pid, fields[19])


def descendants(pid: int) -> set[tuple[int, str]]:
    """Every live process under `pid`, by identity (a reused pid is another process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    found: set[tuple[int, str]] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            identity = process_identity(child)
            if identity is not None:
                found.add(identity)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def socket_dirs(tmp: Path) -> set[Path]:
    """The directories under `tmp` that hold a worker's socket."""
    return {sock.parent for sock in tmp.rglob("worker.sock")}


async def alive(identities: set[tuple[int, str]]) -> set[tuple[int, str]]:
    return {identity for identity in identities if process_identity(identity[0]) == identity}


@contextlib.asynccontextmanager
async def checker_process(stack: Stack, tmp: Path, data: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`bmms actor checker` as its own OS process, with its own temp dir: it prewarms a sandbox as it starts."""
    log = (data / "checker.log").open("ab") if data.mkdir(exist_ok=True) is None else None
    env = {**stack.env("checker"), "TMPDIR": str(tmp), "BMMS_DATA_DIR": str(data), "BMMS_DEPLOY_BACKEND": "process"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "actor", "checker", env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 60)


@pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap is not installed")
async def test_a_killed_checker_leaves_no_sandbox_process_and_the_next_start_removes_its_temp_dir(
    stack: Stack, tmp_path: Path, short_tmp: Path
) -> None:
    tmp, data = short_tmp, tmp_path / "data"
    async with checker_process(stack, tmp, data) as first:

        async def sandbox_running() -> set[tuple[int, str]]:
            tree = descendants(first.pid)
            has_worker = any("runner_template.worker" in cmdline(pid) for pid, _ in tree)
            return tree if has_worker and any("bwrap" in cmdline(pid) for pid, _ in tree) else set()

        async def worker_sockets() -> set[Path]:
            return socket_dirs(tmp)

        sandbox = await eventually(sandbox_running, timeout=120)
        left = await eventually(worker_sockets)
        first.send_signal(signal.SIGKILL)
        await first.wait()

        async def none_alive() -> bool:
            return not await alive(sandbox)

        await eventually(none_alive)
        assert all(directory.exists() for directory in left)  # a SIGKILLed process cleans nothing up

    async with checker_process(stack, tmp, data) as second:

        async def removed() -> bool:
            return not any(directory.exists() for directory in left)

        await eventually(removed, timeout=120)
        assert second.returncode is None


async def test_an_unsandboxed_worker_dies_with_the_process_that_started_it(short_tmp: Path) -> None:
    script = (
        "import asyncio\n"
        "from runner_template.sandbox import Unsandboxed\n"
        "async def main():\n"
        "    opened = await Unsandboxed().open()\n"
        "    await opened.connect()\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(short_tmp), "PYTHONPATH": str(Path(__file__).parents[3])},
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 60) == b"ready\n"
        workers = {(pid, start) for pid, start in descendants(process.pid) if "runner_template.worker" in cmdline(pid)}
        assert workers
        process.send_signal(signal.SIGKILL)
        await process.wait()

        async def none_alive() -> bool:
            return not await alive(workers)

        await eventually(none_alive)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
