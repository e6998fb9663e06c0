"""Runners as local child processes, their generated code in bubblewrap sandboxes: for machines without Docker.

Each runner's front (trusted: HTTP, tokens, usage, the egress policy and the secrets) is forked from a fork
server that imported the runner's code once (actors/runtime/zygote.py: a front listens in a fraction of a
second instead of paying seconds of imports), in its own session (so it outlives a deployer restart), with
exactly the environment the spec gives, its own working directory and rlimits. The front starts the worker
that runs the generated module in a bubblewrap sandbox of its own (`runner_template.sandbox.Bubblewrap`: a
user of its own, no network, a read-only root without the platform's files, its own PID namespace, limits);
`isolation = "sandbox"`. Without bubblewrap the backend refuses to run anything, unless
`BMMS_ALLOW_UNSANDBOXED_CODE` (development only) lets the worker run as a plain process
(`isolation = "process"`, warned about in every build log).

State lives in files, not memory: `<root>/<server_id>/runner.json` (pid and its start time, port, version,
artifact hash) and `runner.log`, so `running()` finds every runner again after a restart (the pid with the
same start time is the same process, even when pids are reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from actors.deployer.backends.base import Backend, BackendError, RunnerSpec, RunningRunner
from actors.runtime.zygote import (
    ForkServer,
    ForkServerError,
    free_port,
    start_time,
    wait_listening,
)
from bus_schemas.servers import BackendName, Isolation
from runner_template.limits import WorkerLimits
from runner_template.sandbox import INSTALL_HINT, bwrap_path

_STATE = "runner.json"
_LOG = "runner.log"
_ENV_DIGEST = "runner.env.sha256"
"""Digest of the environment the runner was started with: the same version with other secrets is replaced."""


def _alive(pid: int, started: int) -> bool:
    return started != 0 and start_time(pid) == started


def env_digest(env: Mapping[str, str]) -> str:
    """What tells two runner environments apart (secret values enter only hashed)."""
    return hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()


class ProcessBackend(Backend):
    """Runs each server as a child process under `root`."""

    name: BackendName = "process"

    def __init__(self, root: Path, *, start_timeout: float = 30.0, unsandboxed: bool = False) -> None:
        self.root = root
        self.start_timeout = start_timeout
        self.unsandboxed = unsandboxed
        """Run generated code without a sandbox (development only): `BMMS_ALLOW_UNSANDBOXED_CODE`."""
        self.isolation: Isolation = "process" if unsandboxed else "sandbox"
        self._locks: dict[str, asyncio.Lock] = {}
        self._forks = ForkServer(root / ".zygote")

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

    def _env_digest(self, server_id: str) -> str | None:
        try:
            return (self._dir(server_id) / _ENV_DIGEST).read_text()
        except OSError:
            return None

    def _runner_of(self, server_id: str) -> RunningRunner | None:
        state = self._state(server_id)
        if state is None or not _alive(int(str(state["pid"])), int(str(state.get("start_time", 0)))):
            return None
        return RunningRunner(
            server_id=server_id, version=int(str(state["version"])), artifact_hash=str(state["artifact_hash"]),
            upstream=f"http://127.0.0.1:{state['port']}", ref=str(state["pid"]),
        )

    async def run(self, spec: RunnerSpec) -> RunningRunner:
        async with self._lock(spec.server_id):
            current = self._runner_of(spec.server_id)
            if (current is not None and current.artifact_hash == spec.artifact_hash and current.version == spec.version
                    and self._env_digest(spec.server_id) == env_digest(spec.environment())):
                return current
            if not self.unsandboxed and bwrap_path() is None:
                raise BackendError(INSTALL_HINT)
            directory = self._dir(spec.server_id)
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            artifact = directory / f"{spec.artifact_hash}.json"
            artifact.write_bytes(spec.artifact_json)
            port = free_port()
            # the front's own limits (its worker sets its own): no CPU cap, room for the SDK's address space
            limits = WorkerLimits(memory_bytes=max(spec.limits.memory_bytes * 8, WorkerLimits.memory_bytes),
                                  file_size_bytes=64 * 1024 * 1024, open_files=1024, cpu_seconds=0)
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": str(directory),
                "PYTHONDONTWRITEBYTECODE": "1",
                **spec.environment(artifact=str(artifact), host="127.0.0.1", port=port, server_id=spec.server_id,
                                   worker="unsandboxed" if self.unsandboxed else "bwrap"),
            }
            try:
                pid, started = await self._forks.spawn(env=env, cwd=directory, log=directory / _LOG, limits=limits)
            except (ForkServerError, OSError) as exc:
                raise BackendError(f"cannot start the runner: {exc}") from None
            try:
                await wait_listening(pid, started, port, self.start_timeout)
            except ForkServerError as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                raise BackendError(str(exc)) from None
            (directory / _STATE).write_text(json.dumps({
                "pid": pid, "start_time": started, "port": port, "version": spec.version,
                "artifact_hash": spec.artifact_hash, "org_id": spec.org_id,
            }))
            (directory / _ENV_DIGEST).write_text(env_digest(spec.environment()))
            if current is not None:
                await self._terminate(int(current.ref))
            for old in directory.glob("*.json"):
                if old.name not in (_STATE, artifact.name):
                    old.unlink(missing_ok=True)
            return RunningRunner(
                server_id=spec.server_id, version=spec.version, artifact_hash=spec.artifact_hash,
                upstream=f"http://127.0.0.1:{port}", ref=str(pid),
            )

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
        await self._forks.close()
