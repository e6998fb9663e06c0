"""The deployer actor: consumes its pipeline stage; the deploy step itself is not built yet."""

from __future__ import annotations

from actors.runtime.actor import Actor
from actors.runtime.build_events import unbuilt_stage
from bus_schemas.registry import DEPLOYER_CHECKED


def create_actor() -> Actor:
    """The deployer actor, wired to its durable consumer."""
    return unbuilt_stage("deployer", DEPLOYER_CHECKED, "deploy")
