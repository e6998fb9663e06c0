"""What the Docker and Swarm backends share: one lazily opened Engine client, and a lock per server."""

from __future__ import annotations

import asyncio

import aiodocker


class EngineClient:
    """The Docker Engine connection of a backend (given, or opened on first use at `docker_url` and then
    owned), and per-server locks so one process never changes a server's runner twice at once."""

    def __init__(self, docker: aiodocker.Docker | None, docker_url: str | None) -> None:
        self._docker = docker
        self._docker_url = docker_url
        self._owns_docker = docker is None
        self._locks: dict[str, asyncio.Lock] = {}

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._docker_url)
        return self._docker

    def _lock(self, server_id: str) -> asyncio.Lock:
        return self._locks.setdefault(server_id, asyncio.Lock())

    async def close(self) -> None:
        """Close the Engine connection if this backend opened it (what runs keeps running)."""
        if self._docker is not None and self._owns_docker:
            await self._docker.close()
        self._docker = None
