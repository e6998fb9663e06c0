"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from litestar import Controller, get
from litestar.di import NamedDependency

from bus_schemas.base import FailureCode
from gateway.problems import Problem
from gateway.services import EdgeServices


class HealthController(Controller):
    """`/healthz`: the process runs. `/readyz`: it can serve (bus and database answer)."""

    tags = ["health"]

    @get("/healthz", summary="The process is alive")
    async def healthz(self) -> dict[str, str]:
        """Always 200 while the process runs."""
        return {"status": "ok"}

    @get("/readyz", summary="The gateway can serve requests")
    async def readyz(self, services: NamedDependency[EdgeServices]) -> dict[str, object]:
        """200 when the bus and the database answer, else 503 naming what is down."""
        checks = dict(zip(("bus", "database"), await asyncio.gather(services.check_bus(), services.check_database()),
                          strict=True))
        down = [name for name, state in checks.items() if state not in ("ok", "not configured")]
        if down:
            raise Problem(503, f"not ready: {', '.join(f'{n} ({checks[n]})' for n in down)}",
                          code=FailureCode.UNAVAILABLE, extra={"checks": checks})
        return {"status": "ready", "checks": checks}
