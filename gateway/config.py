"""Tuning of the gateway that is not process configuration (that is `actors.runtime.settings.Settings`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayConfig:
    """Limits and timings of the edge; the defaults suit production, tests shorten the waits."""

    feed_grace_seconds: float = 30.0
    """How long a build's JetStream consumer outlives its last WebSocket, so a reconnect reuses it."""
    max_socket_lag: int = 5000
    """Live events a WebSocket may fall behind before it is closed (the client resumes with `after=`)."""
    auth_cache_seconds: float = 10.0
    """How long a resolved API key is trusted without asking the auth actor again."""
    auth_cache_size: int = 10_000
    """Most API keys remembered at once; the oldest is forgotten first."""
    ready_timeout: float = 1.0
    """Seconds each readiness check (bus flush, database `SELECT 1`) may take."""
