"""Runners as hardened containers on one Docker Engine (aiodocker).

Each server has at most one runner container, `bmms-<server>-v<version>-<spec digest>`, from the image
`bmms-server:<artifact hash>` (see ops.runner_image). A container is:

- read-only root filesystem; `/tmp` a small tmpfs mounted noexec, nosuid, nodev;
- user 10001:10001, every capability dropped, `no-new-privileges`, private IPC;
- limited in pids, memory (no swap) and CPU (`Limits`), with size-capped json-file logs;
- without any mount (no Docker socket, no host path);
- on the bridge network `bmms-runners`, created with inter-container communication off, so a runner cannot
  reach another runner; its port 8000 published on 127.0.0.1 only, on a random host port, which is the
  `upstream` the platform routes to (Traefik, see ops/routing/, reaches the container directly instead);
- restarted by the Engine unless stopped, so runners survive a daemon or host restart.

`run()` starts the new container, waits until it answers HTTP on its published port, and only then removes
the server's other containers: a failed start leaves the old version serving. Containers carry the
`io.bmms.*` labels, and `io.bmms.backend=docker`, so a new backend instance finds them again.

The runner reaches the NATS bus on this host as `host.docker.internal` (the `host-gateway` address, the
docker0 bridge's gateway): a 127.0.0.1/localhost host in `BMMS_RUNNER_NATS_URL` is rewritten to it. The bus
must therefore listen on an address that bridge traffic reaches (0.0.0.0, or the docker0 gateway address),
not on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiodocker
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from actors.deployer.backends.base import (
    LABEL_ARTIFACT,
    LABEL_ORG,
    LABEL_PREFIX,
    LABEL_SERVER,
    LABEL_VERSION,
    RUNNER_PORT,
    BackendError,
    RunnerSpec,
    RunningRunner,
)
from actors.deployer.backends.engine import EngineClient
from actors.runtime.settings import Settings
from bus_schemas.servers import BackendName, Isolation
from ops.runner_image import (
    ARTIFACT_PATH,
    RUNNER_USER,
    RunnerImageError,
    RunnerImages,
    RunnerImageSettings,
    server_image_ref,
)

log = logging.getLogger("bmms.deployer.docker")

NETWORK = "bmms-runners"
"""The runners' bridge network (inter-container communication disabled)."""
ICC_OPTION = "com.docker.network.bridge.enable_icc"
HOST_ALIAS = "host.docker.internal"
"""The name a runner reaches this host (and its NATS bus) by."""
NATS_URL_ENV = "BMMS_RUNNER_NATS_URL"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

LABEL_BACKEND = LABEL_PREFIX + "backend"
LABEL_SPEC = LABEL_PREFIX + "spec"
"""Digest of everything a container was made from (image id, env, limits, version): same digest, same runner."""
LABEL_PATH_PREFIX = LABEL_PREFIX + "path-prefix"
SERVERS_PATH = "/servers"
"""Path under which servers live publicly: `<servers_url>` = `https://<host>/servers`."""
WELL_KNOWN_PRM = "/.well-known/oauth-protected-resource"
TMP_SIZE_BYTES = 16 * 1024 * 1024


def servers_path_of(servers_url: str | None) -> str:
    """The path part of `<servers_url>` (`/servers` when unset, as the default is `<issuer>/servers`)."""
    return urlsplit(servers_url).path.rstrip("/") if servers_url else SERVERS_PATH


def runner_images_from_environment() -> RunnerImages:
    """Runner images as `BMMS_RUNNER_BASE_IMAGE` etc. say (not in `Settings`: they are ops' concern)."""
    return RunnerImages(RunnerImageSettings.from_environment(os.environ))


def routing_labels(
    server_id: str, *, servers_path: str = SERVERS_PATH, network: str | None = NETWORK
) -> dict[str, str]:
    """Labels a reverse proxy routes by: Traefik's docker/swarm provider reads the `traefik.*` ones.

    `<servers_path>/<id>/mcp` goes to the runner's `/mcp`, and the protected resource metadata at
    `/.well-known/oauth-protected-resource<servers_path>/<id>/mcp` to the runner's
    `/.well-known/oauth-protected-resource/mcp`.
    """
    prefix = f"{servers_path}/{server_id}"
    name = f"bmms-{server_id}"
    labels = {
        LABEL_PATH_PREFIX: prefix,
        "traefik.enable": "true",
        f"traefik.http.routers.{name}.rule": f"Path(`{prefix}/mcp`) || PathPrefix(`{prefix}/mcp/`)",
        f"traefik.http.routers.{name}.middlewares": f"{name}-strip",
        f"traefik.http.routers.{name}.service": name,
        f"traefik.http.middlewares.{name}-strip.stripprefix.prefixes": prefix,
        f"traefik.http.routers.{name}-prm.rule": f"Path(`{WELL_KNOWN_PRM}{prefix}/mcp`)",
        f"traefik.http.routers.{name}-prm.middlewares": f"{name}-prm",
        f"traefik.http.routers.{name}-prm.service": name,
        f"traefik.http.middlewares.{name}-prm.replacepath.path": f"{WELL_KNOWN_PRM}/mcp",
        f"traefik.http.services.{name}.loadbalancer.server.port": str(RUNNER_PORT),
    }
    if network:
        labels["traefik.docker.network"] = network
    return labels


def runner_labels(spec: RunnerSpec, backend: BackendName, digest: str) -> dict[str, str]:
    """The `io.bmms.*` labels of one runner."""
    return {
        LABEL_SERVER: spec.server_id,
        LABEL_ORG: spec.org_id,
        LABEL_VERSION: str(spec.version),
        LABEL_ARTIFACT: spec.artifact_hash,
        LABEL_BACKEND: backend,
        LABEL_SPEC: digest,
    }


def bus_reachable_env(env: Mapping[str, str]) -> tuple[dict[str, str], bool]:
    """The runner's env with a loopback NATS host replaced by `host.docker.internal`; whether it was."""
    out = dict(env)
    raw = out.get(NATS_URL_ENV)
    if not raw:
        return out, False
    rewritten = False
    urls = []
    for url in raw.split(","):
        parts = urlsplit(url.strip())
        if parts.hostname in LOOPBACK_HOSTS:
            netloc = HOST_ALIAS if parts.port is None else f"{HOST_ALIAS}:{parts.port}"
            if "@" in parts.netloc:
                netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
            url = urlunsplit(parts._replace(netloc=netloc))
            rewritten = True
        urls.append(url.strip())
    out[NATS_URL_ENV] = ",".join(urls)
    return out, rewritten


def runner_env(spec: RunnerSpec) -> tuple[dict[str, str], bool]:
    """The container's environment: the spec's, bus-reachable, plus what the backend sets."""
    env, rewritten = bus_reachable_env(spec.env)
    env.update({
        "BMMS_RUNNER_ARTIFACT": ARTIFACT_PATH,
        "BMMS_RUNNER_HOST": "0.0.0.0",  # noqa: S104 - inside the container's own network namespace
        "BMMS_RUNNER_PORT": str(RUNNER_PORT),
    })
    return env, rewritten


def spec_digest(spec: RunnerSpec, image_id: str, env: Mapping[str, str]) -> str:
    """What makes two runners the same (secrets enter only hashed)."""
    payload = {
        "image": image_id, "server": spec.server_id, "org": spec.org_id, "version": spec.version,
        "artifact": spec.artifact_hash, "env": sorted(env.items()),
        "limits": [spec.limits.memory_bytes, spec.limits.cpus, spec.limits.pids],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


async def http_answers(host: str, port: int, *, path: str = "/healthz", timeout: float = 2.0) -> bool:
    """Whether an HTTP server answers on host:port (any status: a TCP accept alone proves nothing, since
    Docker's userland proxy accepts on the published port before the runner listens)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return line.startswith(b"HTTP/")


class DockerBackend(EngineClient):
    """Runs each runner as a hardened container on the local Docker Engine."""

    name: BackendName = "docker"
    isolation: Isolation = "container"

    def __init__(
        self,
        images: RunnerImages | None = None,
        *,
        docker: aiodocker.Docker | None = None,
        network: str = NETWORK,
        publish_host: str = "127.0.0.1",
        servers_path: str = SERVERS_PATH,
        ready_timeout: float = 60.0,
    ) -> None:
        super().__init__(docker, None)
        self._images = images or RunnerImages()
        self._network = network
        self._publish_host = publish_host
        self._servers_path = servers_path
        self._ready_timeout = ready_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> DockerBackend:
        """The backend for a deployer: the Engine at `docker_url`, servers routed under `servers_url`'s path."""
        backend = cls(runner_images_from_environment(), servers_path=servers_path_of(settings.servers_url))
        backend._docker_url = settings.docker_url
        return backend


    # -- queries -------------------------------------------------------------------------------------

    async def _containers(self, server_id: str | None = None, *, running_only: bool = False) -> list[DockerContainer]:
        labels = [f"{LABEL_BACKEND}={self.name}"]
        labels.append(f"{LABEL_SERVER}={server_id}" if server_id is not None else LABEL_SERVER)
        filters: dict[str, list[str]] = {"label": labels}
        if running_only:
            filters["status"] = ["running"]
        return await self._client().containers.list(all=True, filters=json.dumps(filters))

    async def running(self) -> list[RunningRunner]:
        """Every running runner container of this backend, from its labels and published port."""
        runners = []
        for container in await self._containers(running_only=True):
            labels: dict[str, str] = container["Labels"] or {}
            port = next((p.get("PublicPort") for p in container["Ports"] or []
                         if p.get("PrivatePort") == RUNNER_PORT and p.get("PublicPort")), None)
            if port is None:
                continue
            runners.append(RunningRunner(
                server_id=labels[LABEL_SERVER], version=int(labels[LABEL_VERSION]),
                artifact_hash=labels[LABEL_ARTIFACT], upstream=f"http://{self._publish_host}:{port}",
                ref=container.id,
            ))
        return runners

    async def logs(self, server_id: str, tail: int) -> list[str]:
        """The last `tail` lines of the server's newest container."""
        containers = await self._containers(server_id)
        if not containers:
            return []
        newest = max(containers, key=lambda c: int(c["Created"]))
        chunks: list[str] = await newest.log(stdout=True, stderr=True, tail=tail)
        return "".join(chunks).splitlines()[-tail:]

    # -- changes -------------------------------------------------------------------------------------


    async def run(self, spec: RunnerSpec) -> RunningRunner:
        """Start `spec` (unless it already runs), wait until it answers, then remove the server's others."""
        async with self._lock(spec.server_id):
            docker = self._client()
            try:
                image = await self._images.server_image(docker, spec.artifact_hash, spec.artifact_json)
            except (RunnerImageError, DockerError) as exc:
                raise BackendError(f"no image for artifact {spec.artifact_hash[:12]}: {exc}") from exc
            image_id = str((await docker.images.inspect(image))["Id"])
            await self._ensure_network()
            env, rewritten = runner_env(spec)
            digest = spec_digest(spec, image_id, env)
            existing = await self._containers(spec.server_id)
            same = next((c for c in existing if (c["Labels"] or {}).get(LABEL_SPEC) == digest), None)
            if same is not None:
                container = docker.containers.container(same.id)
                if same["State"] != "running":
                    await container.start()
            else:
                config = self._config(spec, image, env, rewritten, digest)
                name = f"bmms-{spec.server_id}-v{spec.version}-{digest[:8]}"
                try:
                    container = await docker.containers.create(config, name=name)
                    await container.start()
                except DockerError as exc:
                    raise BackendError(f"cannot start a runner for {spec.server_id}: {exc.message}") from exc
            try:
                port = await self._wait_ready(container)
            except BackendError:
                with contextlib.suppress(DockerError):
                    await container.delete(force=True)
                raise
            for other in existing:
                if other.id != container.id:
                    with contextlib.suppress(DockerError):
                        await docker.containers.container(other.id).delete(force=True)
            return RunningRunner(
                server_id=spec.server_id, version=spec.version, artifact_hash=spec.artifact_hash,
                upstream=f"http://{self._publish_host}:{port}", ref=container.id,
            )

    def _config(self, spec: RunnerSpec, image: str, env: Mapping[str, str], rewritten: bool,
                digest: str) -> dict[str, Any]:
        limits = spec.limits
        labels = runner_labels(spec, self.name, digest)
        labels.update(routing_labels(spec.server_id, servers_path=self._servers_path, network=self._network))
        host_config: dict[str, Any] = {
            "NetworkMode": self._network,
            "PortBindings": {f"{RUNNER_PORT}/tcp": [{"HostIp": self._publish_host, "HostPort": ""}]},
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={TMP_SIZE_BYTES}"},  # noqa: S108 - the tmpfs itself
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "Privileged": False,
            "IpcMode": "private",
            "PidsLimit": limits.pids,
            "Memory": limits.memory_bytes,
            "MemorySwap": limits.memory_bytes,
            "NanoCpus": int(limits.cpus * 1_000_000_000),
            "RestartPolicy": {"Name": "unless-stopped"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "5m", "max-file": "2"}},
            "Mounts": [],
            "Binds": [],
        }
        if rewritten:
            host_config["ExtraHosts"] = [f"{HOST_ALIAS}:host-gateway"]
        return {
            "Image": image,
            "User": RUNNER_USER,
            "Env": [f"{k}={v}" for k, v in sorted(env.items())],
            "Labels": labels,
            "ExposedPorts": {f"{RUNNER_PORT}/tcp": {}},
            "HostConfig": host_config,
        }

    async def _ensure_network(self) -> None:
        """The runners' bridge, with inter-container communication off (created once)."""
        docker = self._client()
        try:
            info = await (await docker.networks.get(self._network)).show()
        except DockerError as exc:
            if exc.status != 404:
                raise
            try:
                await docker.networks.create({
                    "Name": self._network, "Driver": "bridge", "CheckDuplicate": True,
                    "Options": {ICC_OPTION: "false"}, "Labels": {LABEL_BACKEND: self.name},
                })
            except DockerError as created:
                if created.status != 409:  # another deployer created it meanwhile
                    raise
            info = await (await docker.networks.get(self._network)).show()
        if (info.get("Options") or {}).get(ICC_OPTION) != "false":
            raise BackendError(f"network {self._network} exists with inter-container communication enabled; "
                               "remove it (docker network rm) so the deployer creates it isolated")

    async def _wait_ready(self, container: DockerContainer) -> int:
        """The container's published port, once its runner answers HTTP there; BackendError if it dies."""
        deadline = asyncio.get_running_loop().time() + self._ready_timeout
        while True:
            info = await container.show()
            state = info["State"]
            if not state.get("Running") or state.get("Restarting") or int(info.get("RestartCount") or 0) > 0:
                lines = await self._tail(container, 20)
                raise BackendError(f"runner exited (status {state.get('ExitCode')}): " + " | ".join(lines))
            port = self._published_port(info)
            if port is not None and await http_answers(self._publish_host, port):
                return port
            if asyncio.get_running_loop().time() > deadline:
                lines = await self._tail(container, 20)
                raise BackendError(f"runner did not answer within {self._ready_timeout:.0f} s: " + " | ".join(lines))
            await asyncio.sleep(0.1)

    def _published_port(self, info: Mapping[str, Any]) -> int | None:
        bindings = ((info.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{RUNNER_PORT}/tcp") or []
        for binding in bindings:
            if binding.get("HostIp") in (self._publish_host, "0.0.0.0", "") and binding.get("HostPort"):  # noqa: S104
                return int(binding["HostPort"])
        return None

    async def _tail(self, container: DockerContainer, tail: int) -> list[str]:
        with contextlib.suppress(DockerError):
            chunks: list[str] = await container.log(stdout=True, stderr=True, tail=tail)
            return "".join(chunks).splitlines()[-tail:]
        return []

    async def stop(self, server_id: str) -> None:
        """Stop the server's containers (kept, with their logs, for a later `run`)."""
        async with self._lock(server_id):
            for container in await self._containers(server_id, running_only=True):
                with contextlib.suppress(DockerError):
                    await self._client().containers.container(container.id).stop(t=10)

    async def remove(self, server_id: str, artifact_hashes: tuple[str, ...]) -> None:
        """Remove the server's containers, then the images of `artifact_hashes` no container uses."""
        async with self._lock(server_id):
            docker = self._client()
            for container in await self._containers(server_id):
                try:
                    await docker.containers.container(container.id).delete(force=True)
                except DockerError as exc:
                    if exc.status != 404:
                        raise BackendError(f"cannot remove container {container.id[:12]}: {exc.message}") from exc
            for artifact_hash in artifact_hashes:
                users = await docker.containers.list(
                    all=True, filters=json.dumps({"label": [f"{LABEL_ARTIFACT}={artifact_hash}"]}))
                if users:
                    continue
                try:
                    await docker.images.delete(server_image_ref(artifact_hash))
                except DockerError as exc:
                    if exc.status not in (404, 409):
                        raise BackendError(f"cannot remove image of {artifact_hash[:12]}: {exc.message}") from exc
