"""Runners as local child processes: for machines without Docker. Less isolated, and it says so.

Each runner is `python -m runner_template` in its own session (so it outlives a deployer restart), with
a clean environment (only what the spec gives), its own working directory and rlimits: address space,
open files, file size, no core dumps. What it cannot do that containers do: a read-only root, dropped
capabilities, a private network and process namespace, a pids limit. `isolation = "process"` travels to
the person with every deploy.

State lives in files, not memory: `<root>/<server_id>/runner.json` (pid, port, version, artifact hash)
and `runner.log`, so `running()` finds every runner again after a restart by checking the pid still
runs our runner for that server (its /proc environ carries the server id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sys
from collections import deque
from pathlib import Path

from actors.deployer.backends.base import Backend, BackendError, Limits, RunnerSpec, RunningRunner
from bus_schemas.servers import BackendName, Isolation

_STATE = "runner.json"
_LOG = "runner.log"
MIN_ADDRESS_SPACE = 2 * 1024 * 1024 * 1024
"""Address space is not resident memory: CPython with the SDK maps ~1 GiB before it does anything."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit(limits: Limits) -> None:  # runs in the child between fork and exec
    address_space = max(limits.memory_bytes * 8, MIN_ADDRESS_SPACE)
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024 * 1024, 64 * 1024 * 1024))
    os.nice(5)


def _alive_runner(pid: int, server_id: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"BMMS_RUNNER_SERVER_ID={server_id}".encode() in environ.split(b"\0")


class ProcessBackend(Backend):
    """Runs each server as a child process under `root`."""

    name: BackendName = "process"
    isolation: Isolation = "process"

    def __init__(self, root: Path, *, start_timeout: float = 30.0) -> None:
        self.root = root
        self.start_timeout = start_timeout
        self._locks: dict[str, asyncio.Lock] = {}

    def _dir(self, server_id: str) -> Path:
        return self.root / server_id

    def _lock(self, server_id: str) -> asyncio.Lock:
        return self._locks.setdefault(server_id, asyncio.Lock())

    def _state(self, server_id: str) -> dict[str, object] | None:
        try:
            state: dict[str, object] = json.loads((self._dir(server_id) / _STATE).read_text())
        except (OSError, ValueError):
            return None
        return state

    def _runner_of(self, server_id: str) -> RunningRunner | None:
        state = self._state(server_id)
        if state is None or not _alive_runner(int(str(state["pid"])), server_id):
            return None
        return RunningRunner(
            server_id=server_id, version=int(str(state["version"])), artifact_hash=str(state["artifact_hash"]),
            upstream=f"http://127.0.0.1:{state['port']}", ref=str(state["pid"]),
        )

    async def run(self, spec: RunnerSpec) -> RunningRunner:
        async with self._lock(spec.server_id):
            current = self._runner_of(spec.server_id)
            if current is not None and current.artifact_hash == spec.artifact_hash and current.version == spec.version:
                return current
            directory = self._dir(spec.server_id)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            artifact = directory / f"{spec.artifact_hash}.json"
            artifact.write_bytes(spec.artifact_json)
            port = _free_port()
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": str(directory),
                "PYTHONDONTWRITEBYTECODE": "1",
                **spec.env,
                "BMMS_RUNNER_ARTIFACT": str(artifact),
                "BMMS_RUNNER_HOST": "127.0.0.1",
                "BMMS_RUNNER_PORT": str(port),
                "BMMS_RUNNER_SERVER_ID": spec.server_id,
            }
            log = (directory / _LOG).open("ab")
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "runner_template", env=env, cwd=directory, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=log, start_new_session=True, preexec_fn=lambda: _limit(spec.limits),
                )
            finally:
                log.close()
            try:
                await self._wait_listening(process, port)
            except BackendError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                raise
            (directory / _STATE).write_text(json.dumps({
                "pid": process.pid, "port": port, "version": spec.version, "artifact_hash": spec.artifact_hash,
                "org_id": spec.org_id,
            }))
            if current is not None:
                await self._terminate(int(current.ref))
            for old in directory.glob("*.json"):
                if old.name not in (_STATE, artifact.name):
                    old.unlink(missing_ok=True)
            return RunningRunner(
                server_id=spec.server_id, version=spec.version, artifact_hash=spec.artifact_hash,
                upstream=f"http://127.0.0.1:{port}", ref=str(process.pid),
            )

    async def _wait_listening(self, process: asyncio.subprocess.Process, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        delay = 0.02
        while loop.time() < deadline:
            if process.returncode is not None:
                raise BackendError(f"the runner exited with status {process.returncode} before it listened")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise BackendError(f"the runner did not listen on port {port} within {self.start_timeout:.0f} s")

    async def _terminate(self, pid: int, grace: float = 10.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # noqa: ASYNC222 (WNOHANG never blocks)
                    return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    async def stop(self, server_id: str) -> None:
        async with self._lock(server_id):
            current = self._runner_of(server_id)
            if current is not None:
                await self._terminate(int(current.ref))
            (self._dir(server_id) / _STATE).unlink(missing_ok=True)

    async def remove(self, server_id: str, artifact_hashes: tuple[str, ...]) -> None:
        del artifact_hashes  # every file of the server lives in its directory
        await self.stop(server_id)
        shutil.rmtree(self._dir(server_id), ignore_errors=True)

    async def running(self) -> list[RunningRunner]:
        if not self.root.is_dir():
            return []
        found = (self._runner_of(d.name) for d in sorted(self.root.iterdir()) if d.is_dir())
        return [r for r in found if r is not None]

    async def logs(self, server_id: str, tail: int) -> list[str]:
        path = self._dir(server_id) / _LOG
        if not path.exists():
            return []
        with path.open("rb") as f:
            return [line.decode(errors="replace").rstrip("\n") for line in deque(f, maxlen=tail)]

    async def close(self) -> None:
        return None
