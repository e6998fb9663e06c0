"""The one expected failure of every deployer operation: a refusal with a failure code, answered as `Failed`."""

from __future__ import annotations

from bus_schemas.base import Failed


class DeployRefused(Exception):
    """A deploy or lifecycle action cannot go ahead; `code` and `detail` say why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def failed(self) -> Failed:
        """The refusal as an RPC's answer."""
        return Failed(code=self.code, detail=self.detail)
