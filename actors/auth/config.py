"""Tuning of the auth actor that is not process configuration (that is `actors.runtime.settings.Settings`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuthConfig:
    """Lifetimes and limits of sign-in; the defaults suit production, tests shorten or tighten them."""

    magic_link_ttl_seconds: int = 15 * 60
    """How long a magic link can be used (once)."""
    session_ttl_seconds: int = 30 * 24 * 3600
    """How long a session lasts from sign-in."""
    key_cache_seconds: float = 30.0
    """How long a verified API key skips argon2id (revocation is still checked every time)."""
    links_per_email: int = 5
    """Magic links one address may be sent per window."""
    links_per_ip: int = 20
    """Magic links one client address may ask for per window."""
    rate_window_seconds: int = 15 * 60
    """The fixed window the two limits above count in."""
