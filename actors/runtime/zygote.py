"""A fork server for runners: one process imports the runner's code once, then forks a child per runner.

Starting `python -m runner_template` costs seconds of imports (the mcp SDK, pydantic models) before the
runner listens; a child forked from a process that already imported them listens in a fraction of that.
The server is a plain synchronous loop on a Unix socket (no event loop or thread exists when it forks).
Each child gets its own session (so its whole group can be signalled), its log file as stdout/stderr,
its working directory, rlimits, a niceness, and exactly the environment it was given (the server's own
environment is cleared first), then runs `runner_template.app.main()`.

The server exits within a second of its parent (the actor that started it); the children it forked keep
running, each in its own session.

Protocol: one JSON line per connection, {"env", "cwd", "log", "limits"} -> {"pid", "start_time"} or
{"error"}. The socket is created mode 0600 in a directory only its owner can enter.

Run: `python -m actors.runtime.zygote SOCKET_PATH`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from runner_template.limits import WorkerLimits

_REPO = Path(__file__).resolve().parent.parent.parent
"""Where actors/ and runner_template/ live (an editable install's finder does not resolve them from a
foreign working directory)."""

def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None if it is
    gone: with the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the runner. Never returns."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(request["cwd"])
        WorkerLimits(**request["limits"]).apply()
        os.environ.clear()
        os.environ.update(request["env"])
        from runner_template import app

        app.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(path: Path) -> None:
    """Preload the runner's imports, then fork one child per request until killed."""
    from runner_template import app  # noqa: F401 (the point: imported once, before any fork)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    listener.settimeout(1.0)
    parent = os.getppid()
    print("zygote ready", flush=True)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent:  # whoever started us is gone: so are we (our children stay)
                path.unlink(missing_ok=True)
                return
            continue
        conn.settimeout(10.0)
        with conn:
            try:
                request = json.loads(conn.makefile("rb").readline())
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    _child(request)
                conn.sendall(json.dumps({"pid": pid, "start_time": start_time(pid)}).encode() + b"\n")
            except Exception as exc:  # a bad request must not end the server
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (for a child to bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(pid: int, started: int, port: int, timeout: float) -> None:
    """Return once the child `pid` (with start time `started`) accepts TCP on 127.0.0.1:`port`; raise
    ForkServerError when it exits first or `timeout` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.01
    while loop.time() < deadline:
        if start_time(pid) != started:
            raise ForkServerError("the runner exited before it listened (its log says why)")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise ForkServerError(f"the runner did not listen on port {port} within {timeout:.0f} s")


class ForkServerError(Exception):
    """The fork server could not start a child."""


class ForkServer:
    """The client side: starts the server (in its own session) on first use and asks it for children."""

    def __init__(self, directory: Path, *, start_timeout: float = 60.0) -> None:
        self.directory = directory
        # A socket of its own: deployer copies on one data dir share `directory`, and a server binding another's
        # path would take it over, leaving that copy without a fork server once this one's parent ended.
        self.path = directory / f"zygote-{os.getpid()}-{secrets.token_hex(4)}.sock"
        self.start_timeout = start_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._process is not None and self._process.returncode is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A child's /proc/<pid>/environ shows the environment the server was started with, so that one holds
        # nothing of ours: no credential of this actor can be read back by generated code.
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-s", "-m", "actors.runtime.zygote", str(self.path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=None, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(_REPO)},
        )
        assert self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), self.start_timeout)
        except TimeoutError:
            self._process.kill()
            raise ForkServerError(f"the fork server did not start within {self.start_timeout:.0f} s") from None
        if line.strip() != b"zygote ready":
            raise ForkServerError(f"the fork server did not start (exit {await self._process.wait()})")

    async def spawn(self, *, env: dict[str, str], cwd: Path, log: Path, limits: WorkerLimits) -> tuple[int, int]:
        """Fork a runner child; (pid, start time)."""
        async with self._lock:
            await self._ensure()
        request = {"env": env, "cwd": str(cwd), "log": str(log), "limits": limits.__dict__}
        reader, writer = await asyncio.open_unix_connection(str(self.path))
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            answer = json.loads(await asyncio.wait_for(reader.readline(), 10))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if "error" in answer:
            raise ForkServerError(answer["error"])
        return int(answer["pid"]), int(answer["start_time"] or 0)

    async def close(self) -> None:
        """Stop the server; the children it forked keep running (they are in their own sessions)."""
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()
        self._process = None


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
