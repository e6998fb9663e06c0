"""The checker's state: its toolchain, whose mypy cache is kept in the data dir and warmed while the actor
serves, and the sandbox its sample runs go to, chosen from the settings while the actor serves (a prewarmed
bubblewrap sandbox, a container on docker and swarm platforms, or none)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker

from actors.checker.dynamic import Sandbox
from actors.checker.toolchain import Toolchain, warm_up
from actors.runtime.runner_images import RunnerImages, RunnerImageSettings
from actors.runtime.sandboxes import ContainerWorker, code_sandbox
from actors.runtime.settings import Settings
from runner_template.sandbox import Bubblewrap, Launcher, Prewarmed, SandboxUnavailable, Unsandboxed


@dataclass
class CheckerState:
    """What the checker's handler uses: the tools it runs on each artifact and the sandbox of its sample runs."""

    toolchain: Toolchain
    """The tools each artifact is checked with; while serving, its mypy cache is in the data dir (unless it
    was given one) and warmed from the start (`type_checks`)."""
    sandbox: Sandbox
    launcher: Launcher | None = None
    """Where sample runs start: the one given, or (while serving) the one the settings choose."""
    unavailable: str | None = None
    """Why no sample run can happen here (no sandbox tool installed), said in every failed check."""
    _given_launcher: Launcher | None = field(default=None, init=False, repr=False)
    _warm_up: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._given_launcher = self.launcher

    @contextlib.asynccontextmanager
    async def type_checks(self, settings: Settings, log: logging.Logger) -> AsyncIterator[None]:
        """While the actor serves: mypy's cache in the data dir (it survives restarts), unless the toolchain
        has one, and warmed in the background from the start, so the first build's check finds it warm."""
        given = self.toolchain
        if given.cache_dir is None:
            self.toolchain = dataclasses.replace(given, cache_dir=mypy_cache_dir(settings))
        self._warm_up = asyncio.create_task(self._warm(log), name="mypy-warm-up")
        try:
            yield
        finally:
            warming, self._warm_up = self._warm_up, None
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warming
            self.toolchain = given

    async def _warm(self, log: logging.Logger) -> None:
        began = time.perf_counter()
        try:
            findings = await warm_up(self.toolchain)
        except Exception:  # whatever it was, the first check is only slower: it fills the cache itself
            log.exception("mypy warm-up failed; the first check runs with a cold cache")
            return
        if findings:
            log.warning("mypy warm-up found what it should not: %s", findings[0].render())
        log.info("mypy cache %s warm in %.1f s", self.toolchain.cache_dir, time.perf_counter() - began)

    @property
    def warming_up(self) -> bool:
        """Whether the toolchain's warm-up is still running."""
        return self._warm_up is not None and not self._warm_up.done()

    async def warmed_up(self, timeout: float | None = None, until: asyncio.Event | None = None) -> None:
        """Once the toolchain's warm-up has ended (at once when there is none), or `timeout` passed, or `until`
        is set: a check waits for it rather than analyse the runner's API a second time beside it."""
        if self._warm_up is None:
            return
        # shielded: when the wait ends first (or is cancelled), the warm-up goes on for the next check
        waits: set[asyncio.Future[Any]] = {asyncio.shield(self._warm_up)}
        if until is not None:
            waits.add(asyncio.ensure_future(until.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

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


def mypy_cache_dir(settings: Settings) -> Path:
    """Where a checker keeps its mypy cache: in its data dir, so a restart finds it warm."""
    return Path(settings.data_dir).resolve() / "checker" / "mypy-cache"
