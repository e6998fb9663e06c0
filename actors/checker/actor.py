"""The checker actor: consumes its pipeline stage; the check step itself is not built yet."""

from __future__ import annotations

from actors.runtime.actor import Actor
from actors.runtime.build_events import unbuilt_stage
from bus_schemas.registry import CHECKER_GENERATED


def create_actor() -> Actor:
    """The checker actor, wired to its durable consumer."""
    return unbuilt_stage("checker", CHECKER_GENERATED, "check")
