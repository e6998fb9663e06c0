"""Runners as Docker Swarm services (aiodocker), for more than one machine.

Two services per server. The front, `bmms-<server>`, `replicas` tasks (default 1) from
`bmms-server:<artifact hash>`: HTTP, tokens, usage, the egress policy and the secrets. The worker,
`bmms-<server>-worker`, one task from the runtime image `bmms-runner:<sources>`, the only one that runs the
generated module: attached to nothing but the server's own overlay network `bmms-w-<server>`, created
`internal` (no route out of it, no published port), which the front's tasks join too; the fronts reach the
worker at `tcp:bmms-<server>-worker:7000` and send it their version's module, so the worker does not change
with versions (it is updated only when the runtime image does) and a front's rollback needs nothing of it.
A new version is a service update: rolling (one task at a time), `start-first` (the new task must be healthy
before an old one stops; a container health check makes "healthy" mean "the runner accepts connections"),
`FailureAction: rollback` (a version whose tasks fail puts the previous spec back, and `run()` reports it).
`rollback()` returns to the previous spec on request.

Port 8000 is published in **host** mode by default: each task gets a random port on its node (like
`docker run -p 8000`), and `upstream` is the newest healthy task's, so it changes with every update (the
deployer re-routes to what `run()` returns). `publish_mode="ingress"` publishes one port Swarm assigns
(30000-32767) that stays the same across updates and is balanced over the replicas by the routing mesh, on
every node; on this test machine the mesh did not answer (its IPVS/iptables NAT does not work under this
kernel's nf_tables iptables), which is why host mode is the default. `publish_mode="network"` publishes
nothing: `upstream` is the newest healthy task's address on the `bmms-fronts` overlay, for a deployer that is a
Swarm service on that network itself (the platform stack, ops/deploy/), and the proxy reaches the tasks there
too (`traefik.swarm.network`); the service uses DNS round robin, so no virtual IP (IPVS) is involved.

Hardening as Swarm's API 1.41 (Docker Engine 20.10) expresses it: read-only root filesystem (`ReadOnly`),
every capability dropped (`CapabilityDrop: [ALL]`), user 10001:10001, pids/memory/CPU limits
(`Resources.Limits.Pids/MemoryBytes/NanoCPUs`), no mounts but a size-limited tmpfs on /tmp, `io.bmms.*` labels
on the service and its containers. What this API cannot express, unlike the docker backend:

- `no-new-privileges`: ContainerSpec has no SecurityOpt, and `Privileges.NoNewPrivileges` only exists from API
  1.50 (Docker 28); a 20.10 engine drops the field. The runner image has no setuid binary that would matter
  (it runs as 10001 with an empty capability bounding set), but the flag itself is missing.
- tmpfs mount flags: `TmpfsOptions` has only SizeBytes and Mode on 1.41; the engine mounts tmpfs with
  nosuid,nodev,noexec by default (tested), but that is the engine's default, not our spec.
- swap: no MemorySwap, so a task may use swap up to its memory limit again.
- IPC mode, and inter-container isolation: an overlay network has no `enable_icc` switch; tasks are attached
  only to the ingress network here, which publishes ports but is not meant for task-to-task traffic.
- binding the published port to 127.0.0.1: host-mode and ingress ports listen on every address of the node
  (ingress: of every node), so the nodes' firewalls must keep them closed to the outside (only the proxy may
  reach them).

Images are local to the node that built them: with more than one node, push `bmms-server:<hash>` to a
registry (or build it on each node) before `run()`; nothing in this backend pulls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any, Literal

import aiodocker
from aiodocker.exceptions import DockerError

from actors.deployer.backends.base import (
    LABEL_ARTIFACT,
    LABEL_PREFIX,
    LABEL_SERVER,
    LABEL_VERSION,
    RUNNER_PORT,
    BackendError,
    RunnerSpec,
    RunningRunner,
)
from actors.deployer.backends.docker import (
    HOST_ALIAS,
    LABEL_BACKEND,
    LABEL_ROLE,
    LABEL_SPEC,
    SERVERS_PATH,
    http_answers,
    routing_labels,
    runner_env,
    runner_images_from_environment,
    runner_labels,
    servers_path_of,
    spec_digest,
    worker_command,
)
from actors.deployer.backends.engine import EngineClient
from actors.runtime.runner_images import RUNNER_USER, RunnerImageError, RunnerImages, server_image_ref
from actors.runtime.sandboxes import TMP_SIZE_BYTES
from actors.runtime.settings import Settings
from bus_schemas.servers import BackendName, Isolation

log = logging.getLogger("bmms.deployer.swarm")

SECOND = 1_000_000_000
"""Swarm durations are nanoseconds."""
HEALTHCHECK = (
    "import socket\n"
    f"socket.create_connection(('127.0.0.1', {RUNNER_PORT}), 2).close()\n"
)
"""Inside the task, a TCP accept is the runner's own socket (there is no proxy in front of it)."""
FRONTS_NETWORK = "bmms-fronts"
"""The overlay network every front joins for its way out (the bus, upstream APIs); workers never join it."""
WORKER_PORT = 7000
"""Where a worker task listens on its server's internal network."""
LABEL_WORKER_IMAGE = LABEL_PREFIX + "worker-image"
PublishMode = Literal["host", "ingress", "network"]
"""How the deployer and the proxy reach a front: a port of the node per task (`host`), one port of every node
balanced by the routing mesh (`ingress`), or the tasks' addresses on the fronts' overlay (`network`)."""
FAILED_UPDATE_STATES = frozenset({"paused", "rollback_started", "rollback_paused", "rollback_completed"})


class SwarmBackend(EngineClient):
    """Runs each runner as a replicated Swarm service with rolling, start-first updates."""

    name: BackendName = "swarm"
    isolation: Isolation = "container"

    def __init__(
        self,
        images: RunnerImages | None = None,
        *,
        docker: aiodocker.Docker | None = None,
        docker_url: str | None = None,
        replicas: int = 1,
        publish_mode: PublishMode = "host",
        publish_host: str = "127.0.0.1",
        servers_path: str = SERVERS_PATH,
        ready_timeout: float = 120.0,
    ) -> None:
        super().__init__(docker, docker_url)
        self._images = images or RunnerImages()
        self._replicas = replicas
        self._publish_mode = publish_mode
        self._publish_host = publish_host
        self._servers_path = servers_path
        self._ready_timeout = ready_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> SwarmBackend:
        """The backend for a deployer: the manager at `docker_url`, servers routed under `servers_url`'s path."""
        return cls(runner_images_from_environment(), docker_url=settings.docker_url,
                   servers_path=servers_path_of(settings.servers_url), publish_mode=settings.swarm_publish_mode)


    @staticmethod
    def service_name(server_id: str) -> str:
        """The server's (front's) service."""
        return f"bmms-{server_id}"

    @staticmethod
    def worker_service_name(server_id: str) -> str:
        """The server's worker service."""
        return f"bmms-{server_id}-worker"

    @staticmethod
    def network_name(server_id: str) -> str:
        """The internal overlay network only the server's front and worker join."""
        return f"bmms-w-{server_id}"

    # -- queries -------------------------------------------------------------------------------------

    async def _service(self, server_id: str, *, worker: bool = False) -> Mapping[str, Any] | None:
        name = self.worker_service_name(server_id) if worker else self.service_name(server_id)
        try:
            return await self._client().services.inspect(name)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def _runner(self, service: Mapping[str, Any], digest: str | None = None) -> RunningRunner | None:
        """The runner a service is: at the service's published port (ingress), or at its newest running task's
        (host mode: its published port; network mode: its address on the fronts' overlay); with `digest`, a
        task of that spec."""
        labels = service["Spec"].get("Labels") or {}
        address: tuple[str, int] | None = None
        if self._publish_mode == "ingress":
            port = next((p.get("PublishedPort") for p in (service.get("Endpoint") or {}).get("Ports") or []
                         if p.get("TargetPort") == RUNNER_PORT and p.get("PublishedPort")), None)
            address = (self._publish_host, int(port)) if port else None
        else:
            tasks = sorted(await self._tasks(service), key=lambda t: str(t.get("CreatedAt", "")), reverse=True)
            for task in tasks:
                task_labels = task["Spec"]["ContainerSpec"].get("Labels") or {}
                if task.get("DesiredState") != "running" or task["Status"]["State"] != "running":
                    continue
                if digest is not None and task_labels.get(LABEL_SPEC) != digest:
                    continue
                address = self._task_address(task)
                if address is not None:
                    labels = task_labels
                    break
        if address is None:
            return None
        host, port = address
        return RunningRunner(
            server_id=labels[LABEL_SERVER], version=int(labels[LABEL_VERSION]), artifact_hash=labels[LABEL_ARTIFACT],
            upstream=f"http://{host}:{port}", ref=str(service["ID"]),
        )

    def _task_address(self, task: Mapping[str, Any]) -> tuple[str, int] | None:
        """Where a running task's runner answers: its published port on the node (host mode), or its own
        address on the fronts' overlay (network mode)."""
        if self._publish_mode == "network":
            for attachment in task.get("NetworksAttachments") or []:
                if attachment["Network"]["Spec"]["Name"] == FRONTS_NETWORK and attachment.get("Addresses"):
                    return str(attachment["Addresses"][0]).split("/", 1)[0], RUNNER_PORT
            return None
        port = next((p.get("PublishedPort") for p in (task["Status"].get("PortStatus") or {}).get("Ports")
                     or [] if p.get("TargetPort") == RUNNER_PORT and p.get("PublishedPort")), None)
        return (self._publish_host, int(port)) if port else None

    async def running(self) -> list[RunningRunner]:
        """Every service of this backend with replicas wanted (a stopped one is scaled to 0)."""
        services = await self._client().services.list(
            filters={"label": [f"{LABEL_BACKEND}={self.name}", LABEL_SERVER]})
        runners = []
        for service in services:
            if _replicas_of(service["Spec"]) == 0 or (service["Spec"].get("Labels") or {}).get(LABEL_ROLE) == "worker":
                continue
            runner = await self._runner(service)
            if runner is not None:
                runners.append(runner)
        return runners

    async def logs(self, server_id: str, tail: int) -> list[str]:
        """The last `tail` lines of the service's tasks."""
        if await self._service(server_id) is None:
            return []
        # aiodocker annotates the non-following call as returning the lines, but it is a coroutine of them.
        pending: Any = self._client().services.logs(self.service_name(server_id), stdout=True, stderr=True,
                                                    tail=str(tail))
        chunks = await pending
        text = "".join(chunks) if isinstance(chunks, list) else str(chunks)
        return text.splitlines()[-tail:]

    # -- changes -------------------------------------------------------------------------------------

    def _spec(self, spec: RunnerSpec, image: str, env: Mapping[str, str], rewritten: bool, digest: str,
              replicas: int) -> dict[str, Any]:
        limits = spec.limits
        labels = runner_labels(spec, self.name, digest)
        container: dict[str, Any] = {
            "Image": image,
            "Env": [f"{k}={v}" for k, v in sorted(env.items())],
            "User": RUNNER_USER,
            "Labels": labels,
            "ReadOnly": True,
            "CapabilityDrop": ["ALL"],
            "Mounts": [{"Type": "tmpfs", "Target": "/tmp",  # noqa: S108 - the tmpfs itself
                        "TmpfsOptions": {"SizeBytes": TMP_SIZE_BYTES, "Mode": 0o1777}}],
            # Tolerant: on a busy node a slow check must not make Swarm replace a healthy task.
            "Healthcheck": {"Test": ["CMD", "python3", "-c", HEALTHCHECK], "Interval": 2 * SECOND,
                            "Timeout": 10 * SECOND, "Retries": 5, "StartPeriod": 60 * SECOND},
            "StopGracePeriod": 10 * SECOND,
        }
        if rewritten:
            container["Hosts"] = [f"host-gateway {HOST_ALIAS}"]
        return {
            "Name": self.service_name(spec.server_id),
            "Labels": {**labels, **routing_labels(
                spec.server_id, servers_path=self._servers_path, provider="swarm",
                network=FRONTS_NETWORK if self._publish_mode == "network" else None)},
            "TaskTemplate": {
                "ContainerSpec": container,
                "Networks": [{"Target": FRONTS_NETWORK}, {"Target": self.network_name(spec.server_id)}],
                "Resources": {"Limits": {"NanoCPUs": int(limits.cpus * SECOND), "MemoryBytes": limits.memory_bytes,
                                         "Pids": limits.pids}},
                "RestartPolicy": {"Condition": "any", "Delay": SECOND, "MaxAttempts": 0},
                "LogDriver": {"Name": "json-file", "Options": {"max-size": "5m", "max-file": "2"}},
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
            "UpdateConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "rollback",
                             "Monitor": 5 * SECOND, "MaxFailureRatio": 0},
            "RollbackConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "pause",
                               "Monitor": 5 * SECOND, "MaxFailureRatio": 0},
            "EndpointSpec": {"Mode": "dnsrr"} if self._publish_mode == "network" else {"Mode": "vip", "Ports": [
                {"Protocol": "tcp", "TargetPort": RUNNER_PORT, "PublishMode": self._publish_mode}]},
        }

    def _worker_spec(self, spec: RunnerSpec, image: str, replicas: int) -> dict[str, Any]:
        """The worker service: the module's only home, on the server's internal network alone."""
        limits = spec.limits
        labels = {LABEL_SERVER: spec.server_id, LABEL_BACKEND: self.name, LABEL_ROLE: "worker",
                  LABEL_WORKER_IMAGE: image}
        return {
            "Name": self.worker_service_name(spec.server_id),
            "Labels": labels,
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": image, "Command": worker_command(f"tcp:0.0.0.0:{WORKER_PORT}"), "User": RUNNER_USER,
                    "Labels": labels, "ReadOnly": True, "CapabilityDrop": ["ALL"], "Init": True,
                    "Mounts": [{"Type": "tmpfs", "Target": "/tmp",  # noqa: S108 - the tmpfs itself
                                "TmpfsOptions": {"SizeBytes": TMP_SIZE_BYTES, "Mode": 0o1777}}],
                    "StopGracePeriod": 5 * SECOND,
                },
                "Networks": [{"Target": self.network_name(spec.server_id)}],
                "Resources": {"Limits": {"NanoCPUs": int(limits.cpus * SECOND), "MemoryBytes": limits.memory_bytes,
                                         "Pids": limits.pids}},
                "RestartPolicy": {"Condition": "any", "Delay": SECOND, "MaxAttempts": 0},
                "LogDriver": {"Name": "json-file", "Options": {"max-size": "5m", "max-file": "2"}},
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
            # DNS round robin: names resolve to the tasks themselves (no virtual IP, which needs IPVS)
            "EndpointSpec": {"Mode": "dnsrr"},
        }

    async def _ensure_network(self, server_id: str) -> None:
        """The fronts' network (their way out: the bus, upstream APIs) and the server's internal one."""
        for name, internal, labels in (
            (FRONTS_NETWORK, False, {LABEL_BACKEND: self.name}),
            (self.network_name(server_id), True, {LABEL_SERVER: server_id, LABEL_BACKEND: self.name}),
        ):
            try:
                await self._client().networks.create({"Name": name, "Driver": "overlay", "Internal": internal,
                                                      "CheckDuplicate": True, "Labels": labels})
            except DockerError as exc:
                if exc.status != 409:
                    raise BackendError(f"cannot create network {name}: {exc.message}") from exc

    async def _ensure_worker(self, spec: RunnerSpec, image: str, replicas: int) -> None:
        """The worker service on `image` with `replicas` tasks: created, or updated when either differs."""
        wanted = self._worker_spec(spec, image, replicas)
        service = await self._service(spec.server_id, worker=True)
        if service is None:
            try:
                await self._client()._query_json("services/create", method="POST", data=json.dumps(wanted))
            except DockerError as exc:
                if exc.status != 409:
                    raise BackendError(f"cannot create the worker of {spec.server_id}: {exc.message}") from exc
        elif ((service["Spec"].get("Labels") or {}).get(LABEL_WORKER_IMAGE) != image
              or _replicas_of(service["Spec"]) != replicas):
            await self._update(service, wanted)

    async def _update(self, service: Mapping[str, Any], spec: Mapping[str, Any], *, rollback: bool = False) -> None:
        """POST /services/{id}/update with a whole spec (aiodocker's `update` only swaps the image)."""
        params = {"version": str(service["Version"]["Index"])}
        if rollback:
            params["rollback"] = "previous"
        try:
            await self._client()._query_json(f"services/{service['ID']}/update", method="POST",
                                              params=params, data=json.dumps(spec))
        except DockerError as exc:
            raise BackendError(f"cannot update service {service['Spec']['Name']}: {exc.message}") from exc

    async def run(self, spec: RunnerSpec) -> RunningRunner:
        """Create the server's service, or roll it to `spec`; returns once the new tasks are healthy and the
        published port answers. A version that fails is rolled back by Swarm, and BackendError says so."""
        async with self._lock(spec.server_id):
            docker = self._client()
            try:
                image = await self._images.server_image(docker, spec.artifact_hash, spec.artifact_json)
            except (RunnerImageError, DockerError) as exc:
                raise BackendError(f"no image for artifact {spec.artifact_hash[:12]}: {exc}") from exc
            image_id = str((await docker.images.inspect(image))["Id"])
            try:
                worker_image = await self._images.runtime_image(docker)
            except (RunnerImageError, DockerError) as exc:
                raise BackendError(f"no worker image: {exc}") from exc
            await self._ensure_network(spec.server_id)
            await self._ensure_worker(spec, worker_image, 1)
            env, rewritten = runner_env(spec, f"tcp:{self.worker_service_name(spec.server_id)}:{WORKER_PORT}")
            digest = spec_digest(spec, image_id, env)
            wanted = self._spec(spec, image, env, rewritten, digest, self._replicas)
            service = await self._service(spec.server_id)
            if service is None:
                try:
                    await docker._query_json("services/create", method="POST", data=json.dumps(wanted))
                except DockerError as exc:
                    raise BackendError(f"cannot create service for {spec.server_id}: {exc.message}") from exc
            elif ((service["Spec"].get("Labels") or {}).get(LABEL_SPEC) != digest
                  or _replicas_of(service["Spec"]) != self._replicas):
                await self._update(service, wanted)
            return await self._wait_converged(spec.server_id, digest)

    async def _wait_converged(self, server_id: str, digest: str) -> RunningRunner:
        """The runner once the service runs the spec `digest` healthy and its published port answers; a
        BackendError when Swarm rolled that spec back (its tasks failed) or it does not settle in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        while True:
            service = await self._service(server_id)
            if service is None:
                raise BackendError(f"service of {server_id} vanished")
            status = service.get("UpdateStatus") or {}
            state = status.get("State")
            current = (service["Spec"].get("Labels") or {}).get(LABEL_SPEC)
            if current != digest and state in FAILED_UPDATE_STATES:
                errors = await self._task_errors(service, digest)
                raise BackendError(f"the new version of {server_id} failed and Swarm rolled back to the previous "
                                   f"one ({state}: {status.get('Message', '')}): " + " | ".join(errors[-3:]))
            if current == digest and state == "paused":
                raise BackendError(f"update of {server_id} paused: {status.get('Message', '')}")
            runner = await self._runner(service, digest)
            if (current == digest and state in (None, "completed", "rollback_completed") and runner is not None
                    and await self._healthy_tasks(service, digest) >= _replicas_of(service["Spec"])
                    and await http_answers(*_host_and_port(runner.upstream))):
                return runner
            if state is None and len(errors := await self._task_errors(service, digest)) >= 3:
                raise BackendError(f"tasks of {server_id} keep failing: " + " | ".join(errors[-3:]))
            if loop.time() > deadline:
                raise BackendError(f"service of {server_id} did not converge within {self._ready_timeout:.0f} s "
                                   f"(update state {state}): " + " | ".join(await self._task_errors(service)))
            await asyncio.sleep(0.2)

    async def _tasks(self, service: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        return await self._client().tasks.list(filters={"service": str(service["ID"])})

    async def _healthy_tasks(self, service: Mapping[str, Any], digest: str) -> int:
        count = 0
        for task in await self._tasks(service):
            labels = task["Spec"]["ContainerSpec"].get("Labels") or {}
            if (labels.get(LABEL_SPEC) == digest and task["Status"]["State"] == "running"
                    and task.get("DesiredState") == "running"):
                count += 1
        return count

    async def _task_errors(self, service: Mapping[str, Any], digest: str | None = None) -> list[str]:
        errors = []
        for task in sorted(await self._tasks(service), key=lambda t: str(t.get("CreatedAt", ""))):
            labels = task["Spec"]["ContainerSpec"].get("Labels") or {}
            if digest is not None and labels.get(LABEL_SPEC) != digest:
                continue
            status = task["Status"]
            if status.get("Err") or status["State"] in ("failed", "rejected"):
                errors.append(f"{status['State']}: {status.get('Err') or status.get('Message', '')}")
        return errors

    async def rollback(self, server_id: str) -> RunningRunner:
        """Put the service's previous spec back (Swarm keeps one), and wait until it runs."""
        async with self._lock(server_id):
            service = await self._service(server_id)
            if service is None or not service.get("PreviousSpec"):
                raise BackendError(f"{server_id} has no previous version to roll back to")
            previous_digest = (service["PreviousSpec"].get("Labels") or {}).get(LABEL_SPEC, "")
            await self._update(service, service["Spec"], rollback=True)
            return await self._wait_converged(server_id, previous_digest)

    async def stop(self, server_id: str) -> None:
        """Scale the service to 0 (the spec and image stay for a later `run`)."""
        async with self._lock(server_id):
            service = await self._service(server_id)
            if service is None or _replicas_of(service["Spec"]) == 0:
                return
            spec = dict(service["Spec"])
            spec["Mode"] = {"Replicated": {"Replicas": 0}}
            await self._update(service, spec)
            worker = await self._service(server_id, worker=True)
            if worker is not None and _replicas_of(worker["Spec"]) != 0:
                worker_spec = dict(worker["Spec"])
                worker_spec["Mode"] = {"Replicated": {"Replicas": 0}}
                await self._update(worker, worker_spec)

    async def remove(self, server_id: str, artifact_hashes: tuple[str, ...]) -> None:
        """Delete the service, wait until its containers are gone, then remove the unused server images."""
        async with self._lock(server_id):
            docker = self._client()
            for name in (self.service_name(server_id), self.worker_service_name(server_id)):
                with contextlib.suppress(DockerError):
                    await docker.services.delete(name)
            filters = json.dumps({"label": [f"{LABEL_SERVER}={server_id}", f"{LABEL_BACKEND}={self.name}"]})
            deadline = asyncio.get_running_loop().time() + self._ready_timeout
            while await docker.containers.list(all=True, filters=filters):
                if asyncio.get_running_loop().time() > deadline:
                    raise BackendError(f"containers of {server_id} still exist after the service was removed")
                await asyncio.sleep(0.2)
            with contextlib.suppress(DockerError):
                await (await docker.networks.get(self.network_name(server_id))).delete()
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


def _host_and_port(upstream: str) -> tuple[str, int]:
    host, port = upstream.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _replicas_of(spec: Mapping[str, Any]) -> int:
    return int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0))
