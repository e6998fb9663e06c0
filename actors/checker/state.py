"""The checker's state: its toolchain, and the sandbox its sample runs go to, chosen from the settings while
the actor serves (a prewarmed bubblewrap sandbox, a container on docker and swarm platforms, or none)."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiodocker

from actors.checker.dynamic import Sandbox
from actors.checker.toolchain import Toolchain
from actors.runtime.runner_images import RunnerImages, RunnerImageSettings
from actors.runtime.sandboxes import ContainerWorker, code_sandbox
from actors.runtime.settings import Settings
from runner_template.sandbox import Bubblewrap, Launcher, Prewarmed, SandboxUnavailable, Unsandboxed


@dataclass
class CheckerState:
    """What the checker's handler uses: the tools it runs on each artifact and the sandbox of its sample runs."""

    toolchain: Toolchain
    sandbox: Sandbox
    launcher: Launcher | None = None
    """Where sample runs start: the one given, or (while serving) the one the settings choose."""
    unavailable: str | None = None
    """Why no sample run can happen here (no sandbox tool installed), said in every failed check."""
    _given_launcher: Launcher | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._given_launcher = self.launcher

    @contextlib.asynccontextmanager
    async def sample_runs(self, settings: Settings) -> AsyncIterator[None]:
        """While the actor serves: the launcher the settings choose (unless one was given), closed after."""
        docker: aiodocker.Docker | None = None
        prewarmed: Prewarmed | None = None
        if self.launcher is None:
            try:
                where = code_sandbox(settings)
            except SandboxUnavailable as exc:
                where, self.unavailable = None, str(exc)
            limits = self.sandbox.worker_limits()
            if where == "container":
                docker = aiodocker.Docker(url=settings.docker_url)
                images = RunnerImages(RunnerImageSettings())
                runtime_image = functools.partial(images.runtime_image, docker)
                self.launcher = prewarmed = Prewarmed(ContainerWorker(docker, runtime_image, limits))
            elif where == "bwrap":
                self.launcher = prewarmed = Prewarmed(Bubblewrap(uid=None, limits=limits))
            elif where == "unsandboxed":
                self.launcher = Unsandboxed(limits=limits)
        try:
            yield
        finally:
            if prewarmed is not None:
                await prewarmed.close()
            if docker is not None:
                await docker.close()
            self.launcher = self._given_launcher

    def started(self, log: logging.Logger) -> None:
        """Once the actor listens: say why there is no sandbox, or start warming the first one."""
        if self.unavailable is not None:
            log.error("no sandbox for generated code: %s", self.unavailable)
        elif isinstance(self.launcher, Prewarmed):
            self.launcher.warm()
