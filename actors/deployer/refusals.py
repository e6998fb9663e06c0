"""The one expected failure of every deployer operation: a refusal with a failure code, answered as `Failed`."""

from __future__ import annotations

from typing import cast, get_args

from bus_schemas.base import Failed, FailureCode, FailureCodeName
from bus_schemas.builds import BuildFailureCode, StepFailureCode

STEP_CODES = frozenset(get_args(StepFailureCode))


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
        if self.code in STEP_CODES:
            return FailureCode.INTERNAL
        return cast(FailureCodeName, self.code)  # not a step's own code, so an endpoint's

    def failed(self, detail: str | None = None) -> Failed:
        """The refusal as an RPC's answer (with another `detail` when given)."""
        return Failed(code=self.endpoint_code, detail=detail or self.detail)
