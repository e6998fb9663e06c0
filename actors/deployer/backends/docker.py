"""Runners as hardened containers on one Docker Engine (aiodocker): per server a front and a worker.

Each server version is two containers sharing one small tmpfs volume, `bmms-chan-<server>-<spec digest>`,
mounted at /run/bmms, where the worker listens on a Unix socket:

- the worker, `bmms-<server>-v<version>-<digest>-worker`, from the runtime image `bmms-runner:<sources>`: the
  only container that runs the generated module, with no network at all (`NetworkMode: none`), an init as
  PID 1, and the hardening below (`actors.runtime.sandboxes.worker_container`);
- the front, `bmms-<server>-v<version>-<digest>`, from `bmms-server:<artifact hash>` (see actors.runtime.runner_images):
  HTTP, tokens, quotas, usage on the bus, the egress policy and the upstream secrets; it sends the module to
  the worker over the socket and makes the upstream requests the worker asks for.

Both are:
- read-only root filesystem; `/tmp` a small tmpfs mounted noexec, nosuid, nodev;
- user 10001:10001, every capability dropped, `no-new-privileges`, private IPC;
- limited in pids, memory (no swap) and CPU (`Limits`), with size-capped json-file logs;
- without any host mount (no Docker socket, no host path): only the channel's volume;
- restarted by the Engine unless stopped, so runners survive a daemon or host restart.
The front is on the bridge network `bmms-runners`, created with inter-container communication off, so a
runner cannot reach another runner; its port 8000 published on 127.0.0.1 only, on a random host port, which is
the `upstream` the platform routes to (Traefik, see ops/routing/, reaches the container directly instead).

`run()` starts the new pair, waits until the front answers HTTP on its published port (it binds only once the
worker loaded the module), and only then removes the server's other containers and volumes: a failed start
leaves the old version serving. Containers carry the `io.bmms.*` labels, `io.bmms.backend=docker` and
`io.bmms.role` (front or worker), so a new backend instance finds them again.

The front reaches the NATS bus on this host as `host.docker.internal` (the `host-gateway` address, the
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
from collections.abc import Callable, Mapping
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
from actors.runtime.runner_images import (
    ARTIFACT_PATH,
    RUNNER_USER,
    RunnerImageError,
    RunnerImages,
    RunnerImageSettings,
    server_image_ref,
)
from actors.runtime.sandboxes import WORKER_MODULE, hardened_host_config, worker_container
from actors.runtime.settings import Settings
from bus_schemas.servers import BackendName, Isolation
from runner_template.limits import WorkerLimits

log = logging.getLogger("bmms.deployer.docker")

NETWORK = "bmms-runners"
"""The runners' bridge network (inter-container communication disabled)."""
ICC_OPTION = "com.docker.network.bridge.enable_icc"
HOST_ALIAS = "host.docker.internal"
"""The name a runner reaches this host (and its NATS bus) by."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

LABEL_BACKEND = LABEL_PREFIX + "backend"
LABEL_SPEC = LABEL_PREFIX + "spec"
"""Digest of everything a container was made from (image id, env, limits, version): same digest, same runner."""
LABEL_PATH_PREFIX = LABEL_PREFIX + "path-prefix"
LABEL_ROLE = LABEL_PREFIX + "role"
"""`front` or `worker`."""
CHANNEL_DIR = "/run/bmms"
"""Where both containers mount the channel's volume."""
WORKER_SOCKET = f"{CHANNEL_DIR}/worker.sock"
CHANNEL_VOLUME_SIZE = 64 * 1024
SERVERS_PATH = "/servers"
"""Path under which servers live publicly: `<servers_url>` = `https://<host>/servers`."""
WELL_KNOWN_PRM = "/.well-known/oauth-protected-resource"



def servers_path_of(servers_url: str | None) -> str:
    """The path part of `<servers_url>` (`/servers` when unset, as the default is `<issuer>/servers`)."""
    return urlsplit(servers_url).path.rstrip("/") if servers_url else SERVERS_PATH


def runner_images_from_environment() -> RunnerImages:
    """Runner images as `BMMS_RUNNER_BASE_IMAGE` etc. say (not in `Settings`: they are ops' concern)."""
    return RunnerImages(RunnerImageSettings.from_environment(os.environ))


def routing_labels(
    server_id: str, *, servers_path: str = SERVERS_PATH, network: str | None = NETWORK, provider: str = "docker"
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
        labels[f"traefik.{provider}.network"] = network  # the network Traefik (`provider`) reaches it on
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


def channel_volume(server_id: str, digest: str) -> str:
    """The volume a server version's front and worker share."""
    return f"bmms-chan-{server_id}-{digest[:8]}"


def channel_mount(volume: str) -> dict[str, Any]:
    """The channel's volume at `CHANNEL_DIR`, no host path."""
    return {"Type": "volume", "Source": volume, "Target": CHANNEL_DIR, "ReadOnly": False}


def bus_reachable(nats_url: str | None) -> tuple[str | None, bool]:
    """The runner's NATS URL(s) with a loopback host replaced by `host.docker.internal`; whether it was."""
    if not nats_url:
        return nats_url, False
    rewritten = False
    urls = []
    for url in nats_url.split(","):
        parts = urlsplit(url.strip())
        if parts.hostname in LOOPBACK_HOSTS:
            netloc = HOST_ALIAS if parts.port is None else f"{HOST_ALIAS}:{parts.port}"
            if "@" in parts.netloc:
                netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
            url = urlunsplit(parts._replace(netloc=netloc))
            rewritten = True
        urls.append(url.strip())
    return ",".join(urls), rewritten


def runner_env(spec: RunnerSpec, worker: str = f"unix:{WORKER_SOCKET}") -> tuple[dict[str, str], bool]:
    """The front's environment: the spec's, bus-reachable, plus what the backend sets (`worker`: where its
    worker listens); whether the bus URL was rewritten."""
    nats_url, rewritten = bus_reachable(spec.settings.nats_url)
    env = spec.environment(
        artifact=ARTIFACT_PATH, host="0.0.0.0",  # noqa: S104 - inside the container's own network namespace
        port=RUNNER_PORT, worker=worker, nats_url=nats_url,
    )
    return env, rewritten


def worker_command(listen: str) -> list[str]:
    """The worker container's command: listen at `listen`; limits are the container's (pids, memory)."""
    return [*WORKER_MODULE, f"--listen={listen}", "--kill-all", *WorkerLimits(processes=0).argv()]


def spec_digest(spec: RunnerSpec, image_id: str, env: Mapping[str, str], worker_image_id: str = "") -> str:
    """What makes two runners the same (secrets enter only hashed)."""
    payload = {
        "image": image_id, "worker_image": worker_image_id, "server": spec.server_id, "org": spec.org_id,
        "version": spec.version,
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
        """The last `tail` lines of the server's newest front, then of its worker (prefixed `worker: `)."""
        lines: list[str] = []
        for role, prefix in (("front", ""), ("worker", "worker: ")):
            containers = [c for c in await self._containers(server_id) if (c["Labels"] or {}).get(LABEL_ROLE) == role]
            if containers:
                newest = max(containers, key=lambda c: int(c["Created"]))
                chunks: list[str] = await newest.log(stdout=True, stderr=True, tail=tail)
                lines += [prefix + line for line in "".join(chunks).splitlines()[-tail:]]
        return lines[-tail:]

    # -- changes -------------------------------------------------------------------------------------


    async def run(self, spec: RunnerSpec) -> RunningRunner:
        """Start `spec` (unless it already runs), wait until it answers, then remove the server's others."""
        async with self._lock(spec.server_id):
            docker = self._client()
            try:
                image = await self._images.server_image(docker, spec.artifact_hash, spec.artifact_json)
                worker_image = await self._images.runtime_image(docker)
            except (RunnerImageError, DockerError) as exc:
                raise BackendError(f"no image for artifact {spec.artifact_hash[:12]}: {exc}") from exc
            image_id = str((await docker.images.inspect(image))["Id"])
            worker_image_id = str((await docker.images.inspect(worker_image))["Id"])
            await self._ensure_network()
            env, rewritten = runner_env(spec)
            digest = spec_digest(spec, image_id, env, worker_image_id)
            existing = await self._containers(spec.server_id)
            mine = [c for c in existing if (c["Labels"] or {}).get(LABEL_SPEC) == digest]
            volume = channel_volume(spec.server_id, digest)
            name = f"bmms-{spec.server_id}-v{spec.version}-{digest[:8]}"
            try:
                await self._ensure_volume(volume, runner_labels(spec, self.name, digest))
                worker = await self._start(mine, "worker", f"{name}-worker",
                                           lambda: self._worker_config(spec, worker_image, digest, volume))
                front = await self._start(mine, "front", name,
                                          lambda: self._config(spec, image, env, rewritten, digest, volume))
            except DockerError as exc:
                made = await self._containers(spec.server_id)
                await self._discard([c for c in made if (c["Labels"] or {}).get(LABEL_SPEC) == digest], volume)
                raise BackendError(f"cannot start a runner for {spec.server_id}: {exc.message}") from exc
            try:
                port = await self._wait_ready(front, worker)
            except BackendError:
                await self._discard([front, worker], volume)
                raise
            for other in existing:
                if (other["Labels"] or {}).get(LABEL_SPEC) != digest:
                    with contextlib.suppress(DockerError):
                        await docker.containers.container(other.id).delete(force=True)
            await self._remove_volumes(spec.server_id, keep=volume)
            return RunningRunner(
                server_id=spec.server_id, version=spec.version, artifact_hash=spec.artifact_hash,
                upstream=f"http://{self._publish_host}:{port}", ref=front.id,
            )

    async def _start(self, mine: list[DockerContainer], role: str, name: str,
                     config: Callable[[], dict[str, Any]]) -> DockerContainer:
        """The container of `role` among `mine` (started if it is not running), or a new one."""
        docker = self._client()
        same = next((c for c in mine if (c["Labels"] or {}).get(LABEL_ROLE) == role), None)
        if same is not None:
            container = docker.containers.container(same.id)
            if same["State"] != "running":
                await container.start()
            return container
        container = await docker.containers.create(config(), name=name)
        await container.start()
        return container

    async def _discard(self, containers: list[DockerContainer], volume: str) -> None:
        for container in containers:
            with contextlib.suppress(DockerError):
                await self._client().containers.container(container.id).delete(force=True)
        await self._delete_volume(volume)

    def _config(self, spec: RunnerSpec, image: str, env: Mapping[str, str], rewritten: bool,
                digest: str, volume: str) -> dict[str, Any]:
        limits = spec.limits
        labels = {**runner_labels(spec, self.name, digest), LABEL_ROLE: "front"}
        labels.update(routing_labels(spec.server_id, servers_path=self._servers_path, network=self._network))
        host_config = hardened_host_config(memory_bytes=limits.memory_bytes, pids=limits.pids,
                                           nano_cpus=int(limits.cpus * 1_000_000_000), network_mode=self._network,
                                           mounts=[channel_mount(volume)])
        host_config.update({
            "PortBindings": {f"{RUNNER_PORT}/tcp": [{"HostIp": self._publish_host, "HostPort": ""}]},
            "RestartPolicy": {"Name": "unless-stopped"},
        })
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

    def _worker_config(self, spec: RunnerSpec, image: str, digest: str, volume: str) -> dict[str, Any]:
        limits = spec.limits
        config = worker_container(
            image, worker_command(f"unix:{WORKER_SOCKET}"), memory_bytes=limits.memory_bytes, pids=limits.pids,
            nano_cpus=int(limits.cpus * 1_000_000_000), mounts=[channel_mount(volume)],
            labels={**runner_labels(spec, self.name, digest), LABEL_ROLE: "worker"},
        )
        config["HostConfig"]["RestartPolicy"] = {"Name": "unless-stopped"}
        return config

    async def _ensure_volume(self, name: str, labels: Mapping[str, str]) -> None:
        """The channel's volume: a tmpfs only user 10001 may enter, a few KiB (it holds one socket)."""
        try:
            await self._client()._query_json("volumes/create", method="POST", data=json.dumps({
                "Name": name, "Driver": "local", "Labels": dict(labels),
                "DriverOpts": {"type": "tmpfs", "device": "tmpfs",
                               "o": f"size={CHANNEL_VOLUME_SIZE},uid=10001,gid=10001,mode=0700"},
            }))
        except DockerError as exc:
            if exc.status != 409:
                raise

    async def _remove_volumes(self, server_id: str, keep: str | None = None) -> None:
        """Remove the server's channel volumes (but `keep`) that no container uses any more."""
        docker = self._client()
        listed = await docker._query_json(
            "volumes", params={"filters": json.dumps({"label": [f"{LABEL_SERVER}={server_id}",
                                                                  f"{LABEL_BACKEND}={self.name}"]})})
        for info in listed.get("Volumes") or []:
            if info["Name"] != keep:
                await self._delete_volume(info["Name"])

    async def _delete_volume(self, name: str) -> None:
        """Remove a volume (one a container still uses stays)."""
        with contextlib.suppress(DockerError):
            async with self._client()._query(f"volumes/{name}", method="DELETE"):
                pass

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

    async def _wait_ready(self, container: DockerContainer, worker: DockerContainer) -> int:
        """The front's published port, once it answers HTTP there; BackendError if it or its worker dies."""
        deadline = asyncio.get_running_loop().time() + self._ready_timeout
        while True:
            for which, one in (("worker", worker), ("runner", container)):
                info = await one.show()
                state = info["State"]
                if not state.get("Running") or state.get("Restarting") or int(info.get("RestartCount") or 0) > 0:
                    lines = await self._tail(one, 20)
                    raise BackendError(f"{which} exited (status {state.get('ExitCode')}): " + " | ".join(lines))
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
            await self._remove_volumes(server_id)
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
