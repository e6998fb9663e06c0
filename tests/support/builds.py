"""Reading a build's events back from the BUILDS stream: the one reader of every test that watches a build."""

from __future__ import annotations

from typing import NamedTuple

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from bus_schemas.builds import AnyBuildEvent, BuildFailed, BuildKind
from bus_schemas.plans import ToolPlan, canonical_plan_bytes
from bus_schemas.registry import BUILD_EVENTS, BUILDS, PLANS, build_subject
from runner_template.codec import decode
from tests.support.codegen_samples import plan_hash


class Recorded(NamedTuple):
    """One event of a build as the stream holds it."""

    kind: str
    """The last token of its subject."""
    event: AnyBuildEvent
    data: bytes
    """The bytes that travelled."""


async def build_events(
    js: JetStreamContext, org: str, build: str, *, until: type | None = None, last_seq: int | None = None,
    idle: float = 0.5, timeout: float = 30.0,
) -> list[Recorded]:
    """The build's events in stream order: up to and including the first `until` or `failed` event, or up to
    stream sequence `last_seq`; with neither, all it has (the read ends once none arrives for `idle` seconds).
    Waiting longer than `timeout` for the next event fails, naming what arrived."""
    sub = await js.subscribe(BUILD_EVENTS.wildcard(org=org, build=build), stream=BUILDS.name, ordered_consumer=True)
    waiting = timeout if until is not None or last_seq is not None else idle
    events: list[Recorded] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=waiting)
            except (TimeoutError, nats.errors.TimeoutError):
                if until is None and last_seq is None:
                    return events
                raise AssertionError(f"build {build} stopped short; its events so far: {events}") from None
            event = decode(AnyBuildEvent, msg.data)
            events.append(Recorded(msg.subject.rsplit(".", 1)[-1], event, msg.data))
            if until is not None and isinstance(event, until | BuildFailed):
                return events
            if last_seq is not None and msg.metadata.sequence.stream >= last_seq:
                return events
    finally:
        await sub.unsubscribe()


async def put_plan(js: JetStreamContext, plan: ToolPlan) -> str:
    """Store a plan in PLANS under its hash, as the planner does; the hash."""
    digest = plan_hash(plan)
    store = await js.object_store(PLANS.name)
    await store.put(digest, canonical_plan_bytes(plan))
    return digest


async def last_event(js: JetStreamContext, org: str, build: str, kind: BuildKind) -> AnyBuildEvent | None:
    """The build's latest event of `kind`, or None."""
    try:
        msg = await js.get_last_msg(BUILDS.name, build_subject(org, build, kind))
    except nats.js.errors.NotFoundError:
        return None
    return decode(AnyBuildEvent, msg.data)
