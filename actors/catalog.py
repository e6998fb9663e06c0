"""Which actors exist and where each one's factory lives (imported only when that actor runs)."""

from __future__ import annotations

import importlib

from actors.runtime.actor import Actor

ACTORS: dict[str, str] = {
    "auth": "actors.auth.actor",
    "oauth": "actors.oauth.actor",
    "planner": "actors.planner.actor",
    "codegen": "actors.codegen.actor",
    "checker": "actors.checker.actor",
    "deployer": "actors.deployer.actor",
    "metering": "actors.metering.actor",
}
"""Actor name -> module with a `create_actor() -> Actor` factory."""


def create_actor(name: str) -> Actor:
    """Build the named actor, with its endpoints and consumers declared."""
    if name not in ACTORS:
        raise KeyError(f"no actor named {name!r}; actors: {', '.join(sorted(ACTORS))}")
    module = importlib.import_module(ACTORS[name])
    actor: Actor = module.create_actor()
    return actor
