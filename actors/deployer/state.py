"""What every deployer operation needs: its settings, the runner backend and the box that seals server secrets.

They exist while the actor serves: `open` makes them from the settings, `close` releases them.
"""

from __future__ import annotations

import contextlib

from actors.deployer import server_secrets
from actors.deployer.backends.base import Backend, BackendError
from actors.deployer.backends.select import create_backend
from actors.deployer.refusals import DeployRefused
from actors.runtime.settings import Settings
from bus_schemas.base import FailureCode
from bus_schemas.servers import server_url


class DeployerState:
    """The deployer's settings, backend and secret box (the backend made from the settings, unless one is given)."""

    def __init__(self, backend: Backend | None = None) -> None:
        self._given_backend = backend
        self._backend: Backend | None = backend
        self._settings: Settings | None = None
        self.secret_box = server_secrets.SecretBox(None)
        """Seals server secrets under BMMS_SECRET_KEY (without one, secrets cannot be set)."""

    def open(self, settings: Settings) -> None:
        """Take the settings, the secret key and (unless one was given) the backend they choose."""
        self._settings = settings
        self.secret_box = server_secrets.SecretBox(settings.secret_key)
        if self._backend is None:
            self._backend = create_backend(settings)

    async def close(self) -> None:
        """Stop every runner if the settings say so, and close a backend made by `open`."""
        if self._backend is not None and self._settings is not None and self._settings.deploy_stop_runners_on_exit:
            for runner in await self._backend.running():
                with contextlib.suppress(BackendError):
                    await self._backend.stop(runner.server_id)
        if self._given_backend is None and self._backend is not None:
            await self._backend.close()
            self._backend = None

    @property
    def backend(self) -> Backend:
        """The backend that runs the runners."""
        assert self._backend is not None, "the deployer is not serving"
        return self._backend

    @property
    def settings(self) -> Settings:
        """The deployer's settings."""
        assert self._settings is not None, "the deployer is not serving"
        return self._settings

    @property
    def issuer(self) -> str:
        """The platform's public URL: the issuer of the servers' tokens and the base of their URLs."""
        if not self.settings.public_url:
            raise DeployRefused(FailureCode.UNAVAILABLE, "BMMS_PUBLIC_URL is not set: the deployer cannot tell "
                                "servers their public URL or which issuer signs their tokens")
        return self.settings.public_url.rstrip("/")

    def url_of(self, server_id: str) -> str:
        """A server's public MCP URL."""
        return server_url(self.settings.servers_url, self.issuer, server_id)
