"""The codegen actor's wiring: its one consumer (what it does is in `handlers.py`)."""

from __future__ import annotations

from actors.codegen import handlers
from actors.runtime.actor import Actor, bind
from bus_schemas.registry import CODEGEN_PLANNED


def create_actor() -> Actor:
    """The codegen actor, wired to its durable consumer."""
    actor = Actor("codegen")
    step = handlers.generate_build
    actor.consumer(CODEGEN_PLANNED, on_park=step.on_park)(bind(step, None))
    return actor
