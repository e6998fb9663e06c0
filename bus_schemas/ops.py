"""Operational messages: dead letters."""

from __future__ import annotations

from bus_schemas.base import Message


class DeadLetter(Message, frozen=True, kw_only=True, tag="ops.dead_letter.v1"):
    """A message a consumer gave up on, parked with the reason so nothing is lost."""

    stream: str
    consumer: str
    subject: str
    stream_seq: int
    deliveries: int
    reason: str
    payload: bytes
    headers: dict[str, str] = {}
    parked_at: str
