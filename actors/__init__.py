"""The actors: one package per actor, all built on `actors.runtime`."""
