"""Base message types shared by every domain module."""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

import msgspec

SUBJECT_TOKEN = r"^[A-Za-z0-9_-]{1,64}$"  # noqa: S105 (a pattern, not a secret)
"""What an id must look like to be used as one token of a NATS subject."""

SUBJECT_TOKEN_RE = re.compile(SUBJECT_TOKEN)

Id = Annotated[str, msgspec.Meta(pattern=SUBJECT_TOKEN)]
"""An identifier that is safe to embed in a subject (no dots, wildcards or spaces)."""


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every bus message: immutable, keyword-only, tagged with a versioned type name."""


FailureCodeName = Literal[
    "invalid", "not_found", "unauthenticated", "forbidden", "conflict", "rate_limited", "quota_exceeded",
    "unavailable", "internal", "not_implemented",
]
"""Every failure code an endpoint may answer (`FailureCode` names them); a `Failed` with another does not
decode, so a misspelt code fails where it is sent, in its tests, not at a distant caller."""


class Failed(Message, frozen=True, kw_only=True, tag="failed.v1"):
    """An expected failure returned by an RPC endpoint instead of a result."""

    code: FailureCodeName
    """Machine-readable failure code (see FailureCode)."""
    detail: str
    """A sentence a person can act on."""
    field: str | None = None
    """The input field the failure is about, when there is one."""
    retry_after_seconds: int | None = None
    """For `rate_limited`: seconds until the limit's window frees up (the edge's `Retry-After`)."""


class FailureCode:
    """Failure codes every endpoint may return; the gateway maps each to one HTTP status."""

    INVALID: Final = "invalid"
    NOT_FOUND: Final = "not_found"
    UNAUTHENTICATED: Final = "unauthenticated"
    FORBIDDEN: Final = "forbidden"
    CONFLICT: Final = "conflict"
    RATE_LIMITED: Final = "rate_limited"
    QUOTA_EXCEEDED: Final = "quota_exceeded"
    UNAVAILABLE: Final = "unavailable"
    INTERNAL: Final = "internal"
    NOT_IMPLEMENTED: Final = "not_implemented"
