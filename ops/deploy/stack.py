"""`bmms stack`: the whole platform on a Docker Swarm (ops/deploy/stack.yml), for operators.

`up` builds the images on this node when missing (ops/deploy/images.py: no registry), makes the secrets once
(one file per `BMMS_*` secret in the secrets dir, mode 0600), creates the runners' `bmms-fronts` overlay and runs
`docker stack deploy` with the variables the stack file reads, then waits until the gateway answers ready
through the proxy. `down` removes the stack (its volumes only with `--volumes`; the hosted servers' services
only with `--runners`). `run` runs one operator command (`bmms apikey create ...`) in a throwaway container of
the platform image on the platform's network, as the NATS admin role.

It drives the `docker` command (stack deploy is a client-side feature of it), so it needs the Docker CLI and a
manager node of the swarm.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from actors.runtime.runner_images import LABEL_PREFIX
from ops.devstack import readyz_ok
from ops.infra import NATS_ROLES, new_nats_password
from ops.operator import OperatorError, write_private

STACK_FILE = Path(__file__).with_name("stack.yml")
FRONTS_NETWORK = "bmms-fronts"
"""The runners' fronts' overlay (the swarm backend's); external to the stack, so it outlives it."""
NATS_URL = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
DATABASE_URL = "postgresql://bmms:{password}@postgres:5432/postgres"
SECRET_NAMES = (
    *(f"BMMS_NATS_PASS_{role.upper()}" for role in NATS_ROLES),
    "BMMS_POSTGRES_PASSWORD", "BMMS_DATABASE_URL", "BMMS_SECRET_KEY",
)
"""Every file of the secrets dir: the variable each becomes inside the services given it."""
READY_TIMEOUT = 600.0


@dataclass(frozen=True)
class StackConfig:
    """What one deployment of the stack is called and where it is reached."""

    name: str
    """The stack's name: services are `<name>_<service>`, its network `<name>-platform`."""
    secrets_dir: Path
    public_url: str
    """The platform's public URL (the OAuth issuer; hosted servers live under `<public_url>/servers`)."""
    http_port: int
    """Where the proxy listens on each manager node."""

    @property
    def platform_network(self) -> str:
        """The stack's own overlay network."""
        return f"{self.name}-platform"


def docker_cli() -> str:
    """The Docker CLI on PATH; OperatorError when there is none."""
    found = shutil.which("docker")
    if found is None:
        raise OperatorError("`docker` is not installed (the stack is deployed with the Docker CLI)")
    return found


def docker(*args: str, env: Mapping[str, str] | None = None, input_text: str | None = None,
           check: bool = True) -> str:
    """Run the Docker CLI; its output, or OperatorError with what it said."""
    done = subprocess.run([docker_cli(), *args], capture_output=True, text=True, input=input_text,
                          env=None if env is None else {**os.environ, **env}, timeout=300)
    if check and done.returncode != 0:
        raise OperatorError(f"docker {' '.join(args[:3])} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def ensure_secrets(directory: Path) -> dict[str, str]:
    """The stack's secrets, made once: a random password per NATS role and for PostgreSQL, a key-encryption
    key, and the database URL carrying the password. Existing files are kept (data depends on them)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    made: dict[str, str] = {}
    for name in SECRET_NAMES:
        path = directory / name
        if path.exists():
            made[name] = path.read_text().strip()
            continue
        if name == "BMMS_DATABASE_URL":
            value = DATABASE_URL.format(password=made["BMMS_POSTGRES_PASSWORD"])
        elif name == "BMMS_SECRET_KEY":
            value = secrets.token_urlsafe(32)
        else:
            value = new_nats_password()
        write_private(path, value)
        made[name] = value
    return made


def swarm_state() -> str:
    """This Engine's swarm state (`active` on a member, `inactive` outside any swarm)."""
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()


def ensure_fronts_network() -> None:
    """The runners' overlay (the swarm backend makes it the same way when it is missing)."""
    if docker("network", "inspect", FRONTS_NETWORK, check=False).strip() in ("", "[]"):
        docker("network", "create", "--driver", "overlay", "--label", f"{LABEL_PREFIX}backend=swarm", FRONTS_NETWORK)


def deploy_environment(config: StackConfig, platform_image: str, traefik_image: str, runner_base: str
                       ) -> dict[str, str]:
    """The variables stack.yml reads."""
    return {
        "BMMS_STACK_NAME": config.name, "BMMS_PLATFORM_IMAGE": platform_image, "BMMS_TRAEFIK_IMAGE": traefik_image,
        "BMMS_RUNNER_BASE_IMAGE": runner_base, "BMMS_STACK_SECRETS": str(config.secrets_dir.resolve()),
        "BMMS_PUBLIC_URL": config.public_url.rstrip("/"), "BMMS_HTTP_PORT": str(config.http_port),
    }


def up(config: StackConfig, platform_image: str, traefik_image: str, runner_base: str, *,
       wait: float = READY_TIMEOUT) -> None:
    """Deploy (or update) the stack, then wait until the gateway answers ready through the proxy."""
    if swarm_state() != "active":
        raise OperatorError("this Docker Engine is not a swarm member: run `docker swarm init` first "
                            "(a single node is a swarm of one)")
    ensure_secrets(config.secrets_dir)
    ensure_fronts_network()
    docker("stack", "deploy", "--resolve-image", "never", "--prune", "--compose-file", str(STACK_FILE), config.name,
           env=deploy_environment(config, platform_image, traefik_image, runner_base))
    if wait > 0:
        wait_ready(config, wait)


def services(name: str) -> list[dict[str, str]]:
    """The stack's services as `docker service ls` lists them (Name, Replicas...)."""
    out = docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={name}", "--format", "{{json .}}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def service_tasks(service: str) -> list[dict[str, str]]:
    """The running tasks of one service (`docker service ps`, current state Running)."""
    out = docker("service", "ps", service, "--filter", "desired-state=running", "--format", "{{json .}}")
    return [task for line in out.splitlines() if line.strip()
            if (task := json.loads(line))["CurrentState"].startswith("Running")]


def short_of_replicas(name: str) -> list[str]:
    """`<service> <running>/<wanted>` of each long-running service of the stack not running all its replicas."""
    return [f"{s['Name']} {s['Replicas']}" for s in services(name)
            if s["Name"] != f"{name}_migrate" and not _complete(s["Replicas"])]


def wait_ready(config: StackConfig, timeout: float = READY_TIMEOUT) -> None:
    """Until every service runs its replicas and the gateway is ready through the proxy; OperatorError naming
    the services still short of their replicas after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (short := short_of_replicas(config.name)) or not readyz_ok(config.public_url.rstrip("/")):
        if time.monotonic() > deadline:
            raise OperatorError(f"the stack is not ready after {timeout:.0f} s: " + (", ".join(short) or
                                f"{config.public_url}/readyz does not answer 200"))
        time.sleep(2)  # polling the Engine and the proxy; bounded by the deadline


def _complete(replicas: str) -> bool:
    """`docker service ls`'s `2/2` (or `2/2 (max 1 per node)`): all running."""
    running, _, wanted = replicas.partition(" ")[0].partition("/")
    return running == wanted


def scale(name: str, counts: Mapping[str, int]) -> None:
    """`docker service scale <name>_<service>=N ...`, returning once the tasks run."""
    docker("service", "scale", *(f"{name}_{service}={n}" for service, n in counts.items()))


def run(config: StackConfig, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`bmms ARGV` in a throwaway container of the stack's platform image on its network, as the NATS admin
    role (and with the database URL), its secrets mounted read-only like a service's."""
    image = docker("service", "inspect", f"{config.name}_gateway", "--format",
                   "{{.Spec.TaskTemplate.ContainerSpec.Image}}").strip().split("@", 1)[0]
    mounts = []
    for secret in ("BMMS_NATS_PASS_ADMIN", "BMMS_DATABASE_URL"):
        source = (config.secrets_dir / secret).resolve()
        mounts += ["--mount", f"type=bind,source={source},target=/run/secrets/{secret},readonly"]
    return subprocess.run(
        [docker_cli(), "run", "--rm", "--network", config.platform_network, "--user", "0:0", *mounts,
         "--env", f"BMMS_NATS_URL={NATS_URL}", "--env", "BMMS_LOG_JSON=false",
         image, "bmms", *argv],
        capture_output=True, text=True, timeout=300,
    )


def down(name: str, *, runners: bool = False, volumes: bool = False, timeout: float = 180.0) -> None:
    """Remove the stack and wait until its containers are gone; with `runners`, then every hosted server's
    services and networks (only once the deployers are gone: a deployer would start them again); with
    `volumes`, the stack's data (NATS stores, the database)."""
    if services(name):
        docker("stack", "rm", name)
    _wait_gone(f"label=com.docker.stack.namespace={name}", f"containers of the stack {name}", timeout)
    if runners:
        backend = f"label={LABEL_PREFIX}backend=swarm"
        ids = docker("service", "ls", "--quiet", "--filter", backend).split()
        if ids:
            docker("service", "rm", *ids)
        _wait_gone(backend, "runner containers", timeout)
        for network in docker("network", "ls", "--quiet", "--filter", backend).split():
            docker("network", "rm", network, check=False)
    if volumes:
        found = docker("volume", "ls", "--quiet", "--filter", f"label=com.docker.stack.namespace={name}").split()
        if found:
            docker("volume", "rm", *found)


def _wait_gone(label_filter: str, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while docker("ps", "--all", "--quiet", "--filter", label_filter).split():
        if time.monotonic() > deadline:
            raise OperatorError(f"{what} are still there after {timeout:.0f} s")
        time.sleep(1)  # the Engine stops tasks in the background; bounded by the deadline
