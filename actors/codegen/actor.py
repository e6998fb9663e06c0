"""The codegen actor: consumes its pipeline stage; the generate step itself is not built yet."""

from __future__ import annotations

from actors.runtime.actor import Actor
from actors.runtime.build_events import unbuilt_stage
from bus_schemas.registry import CODEGEN_PLANNED


def create_actor() -> Actor:
    """The codegen actor, wired to its durable consumer."""
    return unbuilt_stage("codegen", CODEGEN_PLANNED, "generate")
