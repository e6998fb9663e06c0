"""Where a worker runs and how the front reaches it: the launchers of the channel's other end.

- `Bubblewrap`: the worker as a child of this process under Debian's bubblewrap (`bwrap`): its own mount
  namespace with a read-only root that holds only /usr, the Python installation and the runner's own
  packages (no /etc, no home, no data dir, no database or Docker socket), a private /tmp of a few MiB, its
  own PID, IPC, UTS and network namespaces (no network at all: not even loopback reaches the host), every
  capability dropped, no new privileges, and, when this process is root, a user of its own
  (`sandbox_uid`) that owns nothing on the host (`setpriv`, util-linux, drops to it inside the namespaces).
  It dies with this process, even one killed by SIGKILL (`--die-with-parent`; its PID namespace takes every
  process inside with it). It listens on a Unix socket this process made (in a directory only it can enter,
  under this process's own `bmms-workers-<pid>-<start>` temp directory, which the next process to open a worker
  removes once this one is gone) and handed over: the sandbox sees no path of it.
- `Unsandboxed`: the worker as a plain child process (killed by the kernel when this process dies), for
  development machines without bubblewrap, only when `BMMS_ALLOW_UNSANDBOXED_CODE` says so; it still holds no
  secret and no policy, but it can read what this user can read and reach the network.
- `Remote`: a worker someone else started (a container with no network), reached over a Unix socket in a
  volume both containers mount, or TCP on a network only the two share.
- `Prewarmed`: any of these, one worker started ahead.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import bus_schemas
import runner_template
from runner_template import channel
from runner_template.channel import Streams
from runner_template.limits import WorkerLimits

log = logging.getLogger("bmms.runner.sandbox")

INSTALL_HINT = ("generated code runs only inside a sandbox: install bubblewrap (Debian/Ubuntu: "
                "`apt-get install bubblewrap`), or, on a development machine only, set "
                "BMMS_ALLOW_UNSANDBOXED_CODE=true to run it unconfined")

SANDBOX_UIDS = (200_000, 1_000_000)
"""The range sandbox users are taken from: no account on the host owns anything with these ids."""

APP_DIR = "/opt/bmms/app"
"""Where the runner's packages appear inside the sandbox (on its PYTHONPATH)."""

TMP_SIZE_BYTES = 8 * 1024 * 1024
SANDBOX_TMP = "/tmp"  # noqa: S108 - the sandbox's own private tmpfs, not the host's
"""The sandbox's private tmpfs, also its home and working directory."""


class SandboxUnavailable(Exception):
    """No sandbox tool is installed (the message says how to get one)."""


@dataclass(frozen=True)
class Opened:
    """A started (or reached) worker: how to connect to it, and how to end it."""

    connect: Callable[[], Coroutine[Any, Any, Streams]]
    """A new connection to the worker's warden (control or data, see `runner_template.channel`); for a worker
    on stdio (`restartable` False), its one channel, once."""
    stop: Callable[[], Coroutine[Any, Any, None]]
    restartable: bool = True
    """Whether the worker's warden takes control connections (fast restarts) or the front replaces it whole."""


class Launcher(Protocol):
    """Starts (or reaches) a worker and hands back its channel."""

    @property
    def description(self) -> str:
        """What the worker runs in, for logs and build steps (e.g. `bubblewrap, uid 412345, no network`)."""
        ...

    async def open(self) -> Opened:
        """A fresh worker; raises OSError (or SandboxUnavailable) when there is none."""
        ...


def sandbox_uid(key: str) -> int:
    """A user id of its own for the sandbox of `key` (a server id; distinct keys rarely share one)."""
    low, high = SANDBOX_UIDS
    return low + int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % (high - low)


def random_uid() -> int:
    """A user id from `SANDBOX_UIDS` nobody can predict (one sandbox's, when it needs no stable one)."""
    low, high = SANDBOX_UIDS
    return low + secrets.randbelow(high - low)


def bwrap_path() -> str | None:
    """bubblewrap's path, if it is installed."""
    return shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")


def _package_dir(package: object) -> Path:
    return Path(str(getattr(package, "__file__", ""))).resolve().parent


def _parents(path: str) -> list[str]:
    parts = Path(path).parts[1:]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def bwrap_argv(bwrap: str, uid: int | None, limits: WorkerLimits) -> list[str]:
    """The bubblewrap command line that runs the worker on an inherited listening socket, `{fd}` (see the
    module doc)."""
    argv = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if uid is None:
        argv += ["--unshare-user", "--disable-userns"]
    else:
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]  # for setpriv only; it drops them
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(TMP_SIZE_BYTES), "--perms", "1777", "--tmpfs", SANDBOX_TMP]
    made: set[str] = {"/usr", SANDBOX_TMP, "/proc", "/dev"}
    # The interpreter and its packages: the venv (sys.prefix) and the installation it was made from.
    for prefix in dict.fromkeys([sys.base_prefix, sys.prefix]):
        real = os.path.realpath(prefix)
        if real == "/usr" or real.startswith("/usr/"):
            continue
        for parent in _parents(prefix):
            if parent not in made:
                argv += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        argv += ["--ro-bind", real, prefix]
        made.add(prefix)
    argv += ["--perms", "0755", "--dir", "/opt", "--perms", "0755", "--dir", "/opt/bmms",
             "--perms", "0755", "--dir", APP_DIR]
    for package in (runner_template, bus_schemas):
        directory = _package_dir(package)
        argv += ["--ro-bind", str(directory), f"{APP_DIR}/{directory.name}"]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "PYTHONPATH", APP_DIR,
             "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYTHONNOUSERSITE", "1",
             "--setenv", "PYTHONUNBUFFERED", "1", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", SANDBOX_TMP,
             "--chdir", SANDBOX_TMP, "--"]
    if uid is not None:
        argv += ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs", "--"]
    argv += [sys.executable, "-P", "-m", "runner_template.worker", "--listen-fd={fd}", "--kill-all", *limits.argv()]
    return argv


WORKER_DIRS_PREFIX = "bmms-workers-"
"""The temp directory holding this process's workers' socket directories: `bmms-workers-<pid>-<start time>`. A
process killed with SIGKILL cannot remove it; the next process that opens a worker does, once its owner is gone."""

_worker_root: Path | None = None


def _process_identity(pid: int) -> str | None:
    """`<pid>-<start time in clock ticks since boot>` of a running process (unique across pid reuse), or None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after its closing one
    return f"{pid}-{stat[stat.rindex(')') + 2:].split()[19]}"


def sweep_worker_dirs(tmp: Path | None = None) -> list[Path]:
    """Remove the worker directories of processes that are gone (killed before they could clean up); returns
    what it removed."""
    removed = []
    for directory in Path(tmp or tempfile.gettempdir()).glob(f"{WORKER_DIRS_PREFIX}*"):
        owner = directory.name.removeprefix(WORKER_DIRS_PREFIX)
        pid = owner.split("-", 1)[0]
        if pid.isdigit() and _process_identity(int(pid)) != owner:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def worker_root() -> Path:
    """This process's directory of worker socket directories, made (after sweeping those of dead processes) on
    first use and removed when the process exits normally."""
    global _worker_root
    identity = _process_identity(os.getpid())
    if _worker_root is None or _worker_root.name != f"{WORKER_DIRS_PREFIX}{identity}":  # a forked child: its own
        sweep_worker_dirs()
        root = Path(tempfile.gettempdir()) / f"{WORKER_DIRS_PREFIX}{identity}"
        root.mkdir(mode=0o700, exist_ok=True)
        atexit.register(_remove_worker_root, root, os.getpid())
        _worker_root = root
    return _worker_root


def _remove_worker_root(root: Path, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked child that exits: the directory is its parent's
        shutil.rmtree(root, ignore_errors=True)


def dies_with_this_process(argv: list[str]) -> list[str]:
    """`argv` started so that the kernel kills it (SIGKILL) when this process dies, even by SIGKILL: through
    util-linux `setpriv --pdeathsig` (bubblewrap's own `--die-with-parent` does the same for a sandbox)."""
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
    if setpriv is None:
        log.warning("setpriv (util-linux) is missing: a worker outlives this process if it is killed")
        return argv
    return [setpriv, "--pdeathsig=KILL", "--", *argv]


async def _spawned(argv: list[str], env: dict[str, str] | None) -> Opened:
    """The worker `argv` makes, listening on a Unix socket this process made in a directory only it can enter
    (under `worker_root()`); `{fd}` in `argv` is the listening socket's descriptor in the child."""
    directory = Path(tempfile.mkdtemp(prefix="w-", dir=worker_root()))
    path = str(directory / "worker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(64)
        process = await asyncio.create_subprocess_exec(
            *[a.replace("{fd}", str(listener.fileno())) for a in argv], pass_fds=(listener.fileno(),),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            env=env if env is not None else {"PATH": "/usr/bin:/bin"}, start_new_session=True,
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        listener.close()

    async def connect() -> Streams:
        if process.returncode is not None:
            raise ConnectionRefusedError(f"the worker exited with {process.returncode}")
        return await asyncio.open_unix_connection(path)

    async def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        shutil.rmtree(directory, ignore_errors=True)

    return Opened(connect, stop)


@dataclass(frozen=True)
class Bubblewrap:
    """The worker in a bubblewrap sandbox, a child of this process (see the module doc)."""

    uid: int | None
    """The sandbox's own user, when this process is root (otherwise the sandbox keeps this process's user,
    mapped in a user namespace); None: a fresh one from `SANDBOX_UIDS` for each worker (the checker's)."""
    limits: WorkerLimits = field(default_factory=WorkerLimits)

    @property
    def description(self) -> str:
        who = ("a user of its own" if self.uid is None else f"uid {self.uid}") if os.geteuid() == 0 \
            else f"uid {os.geteuid()} in a user namespace"
        return f"bubblewrap sandbox ({who}, no network, read-only root)"

    async def open(self) -> Opened:
        bwrap = bwrap_path()
        if bwrap is None:
            raise SandboxUnavailable(INSTALL_HINT)
        uid = (self.uid or random_uid()) if os.geteuid() == 0 else None
        limits = self.limits if uid is not None else dataclasses.replace(self.limits, processes=0)
        return await _spawned(bwrap_argv(bwrap, uid, limits), None)


@dataclass(frozen=True)
class Unsandboxed:
    """The worker as a plain child process (BMMS_ALLOW_UNSANDBOXED_CODE, development only)."""

    limits: WorkerLimits = field(default_factory=WorkerLimits)

    @property
    def description(self) -> str:
        return "NO SANDBOX (BMMS_ALLOW_UNSANDBOXED_CODE): a plain process with this user's rights"

    async def open(self) -> Opened:
        log.warning("running generated code WITHOUT a sandbox (BMMS_ALLOW_UNSANDBOXED_CODE): development only")
        argv = [sys.executable, "-P", "-m", "runner_template.worker", "--listen-fd={fd}",
                *dataclasses.replace(self.limits, processes=0).argv()]
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(_package_dir(runner_template).parent),
               "PYTHONDONTWRITEBYTECODE": "1"}
        return await _spawned(dies_with_this_process(argv), env)


@dataclass(frozen=True)
class Remote:
    """A worker started by someone else (a container), at `unix:PATH` or `tcp:HOST:PORT`."""

    address: str
    wait_seconds: float = 60.0
    """How long to keep trying while the worker is not there yet (its container starts beside the front's)."""

    @property
    def description(self) -> str:
        return f"a worker container with no network, at {self.address}"

    async def open(self) -> Opened:
        async def connect() -> Streams:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait_seconds
            delay = 0.05
            while True:
                try:
                    return await channel.connect(self.address)
                except OSError:  # not listening yet (no socket file, refused, no such host yet)
                    if loop.time() > deadline:
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

        async def stop() -> None:
            pass  # someone else's worker: it stays (its warden ends the tool processes of a closed session)

        return Opened(connect, stop)


def launcher_for(worker: str, key: str, limits: WorkerLimits | None = None) -> Launcher:
    """The launcher a runner's `BMMS_RUNNER_WORKER` names: `bwrap`, `unsandboxed` or a worker's address."""
    limits = limits or WorkerLimits()
    if worker == "bwrap":
        return Bubblewrap(uid=sandbox_uid(key), limits=limits)
    if worker == "unsandboxed":
        return Unsandboxed(limits=limits)
    if worker.startswith(("unix:", "tcp:")):
        return Remote(worker)
    raise ValueError(f"BMMS_RUNNER_WORKER must be bwrap, unsandboxed, unix:PATH or tcp:HOST:PORT, not {worker!r}")


class Prewarmed:
    """A launcher that keeps one worker started ahead, so `open()` hands over one that has already paid its
    imports (the checker's sample runs wait for none); each `open()` starts the next one."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self._spare: asyncio.Task[Opened] | None = None

    @property
    def description(self) -> str:
        return self.launcher.description

    def warm(self) -> None:
        """Start the spare worker now (in the background), if none is starting or waiting."""
        if self._spare is None:
            self._spare = asyncio.create_task(self.launcher.open(), name="spare-worker")

    async def open(self) -> Opened:
        spare, self._spare = self._spare, None
        self.warm()
        if spare is not None:
            try:
                opened = await spare
            except (OSError, SandboxUnavailable):
                opened = None
            if opened is not None:
                return opened
        return await self.launcher.open()

    async def close(self) -> None:
        """Stop the spare worker."""
        spare, self._spare = self._spare, None
        if spare is None:
            return
        with contextlib.suppress(OSError, SandboxUnavailable):
            await (await spare).stop()
