"""The one expected failure of every deployer operation: a refusal with a failure code, answered as `Failed`."""

from __future__ import annotations

from typing import get_args

from bus_schemas.base import Failed, FailureCode, FailureCodeName
from bus_schemas.builds import BuildFailureCode

ENDPOINT_CODES: frozenset[str] = frozenset(get_args(FailureCodeName))


class DeployRefused(Exception):
    """A deploy or lifecycle action cannot go ahead; `code` and `detail` say why."""

    def __init__(self, code: BuildFailureCode, detail: str) -> None:
        super().__init__(detail)
        self.code: BuildFailureCode = code
        self.detail = detail

    @property
    def endpoint_code(self) -> FailureCodeName:
        """The code an RPC answers with: the refusal's own, or `internal` for a step-only one (a backend that
        could not start the runner, a failed health check: the platform's fault, not the caller's)."""
        code = self.code
        return code if code != "check_failed" and code != "backend_failed" and code != "unhealthy" \
            else FailureCode.INTERNAL

    def failed(self, detail: str | None = None) -> Failed:
        """The refusal as an RPC's answer (with another `detail` when given)."""
        return Failed(code=self.endpoint_code, detail=detail or self.detail)
