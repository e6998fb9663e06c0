"""The codegen actor's wiring: its one consumer (what it does is in `handlers.py`)."""

from __future__ import annotations

from actors.codegen import handlers
from actors.runtime.actor import Actor
from actors.runtime.build_events import fail_step_when_parked
from bus_schemas.registry import CODEGEN_PLANNED


def create_actor() -> Actor:
    """The codegen actor, wired to its durable consumer."""
    actor = Actor("codegen")
    actor.consumer(CODEGEN_PLANNED, on_park=fail_step_when_parked("generate", "code generation"))(
        handlers.generate_build
    )
    return actor
