"""A dependency that does not answer is transient: the runtime runs the handler again with backoff, without using up
the message's deliveries, until the dependency is back; only after `transient_retry_deadline` is the message
parked, with a reason naming the dependency. Real nats-server, PostgreSQL and actors in this event loop."""

from __future__ import annotations

import uuid

import nats.js.errors
from nats.aio.client import Client

from actors.runtime.actor import Actor, Context
from actors.runtime.bus import call
from actors.runtime.codec import decode
from actors.runtime.faults import unavailable
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import GetBuild, GetBuildReply
from bus_schemas.ops import DeadLetter
from bus_schemas.registry import DEAD_LETTERS, GET_BUILD
from tests.actors.runtime.test_actor import jobs, publish_job
from tests.conftest import Stack, eventually, running
from tests.support.worker_actor import JOBS, WORKER, Job

__all__ = ["jobs"]  # the fixture, shared with the runtime's other tests


def asks_the_planner(attempts: list[int], done: list[str]) -> Actor:
    """A worker whose every job needs an answer from the build registry (the planner actor)."""
    actor = Actor("worker")

    @actor.consumer(WORKER)
    async def work(job: Job, ctx: Context) -> None:
        assert ctx.delivery is not None
        attempts.append(ctx.delivery.deliveries)
        answer = await call(ctx.nc, GET_BUILD, GetBuild(org_id="nobody", build_id="b0"), timeout=1)
        if isinstance(answer, Failed) and (away := unavailable(answer)) is not None:
            raise away
        done.append(job.job_id)

    return actor


def build_registry_copy() -> Actor:
    """A copy of the planner's GET_BUILD endpoint that knows no build (it starts at once: the real planner's start
    holds this event loop for seconds, longer than the worker's ack wait)."""
    actor = Actor("planner")

    @actor.rpc(GET_BUILD)
    async def get_build(request: GetBuild, ctx: Context) -> GetBuildReply:
        return Failed(code=FailureCode.NOT_FOUND, detail=f"no build {request.build_id}")

    return actor


async def test_a_handler_whose_dependency_is_away_runs_again_until_it_is_back_within_one_delivery(
    stack: Stack, jobs: Client
) -> None:
    attempts: list[int] = []
    done: list[str] = []
    async with running(asks_the_planner(attempts, done), stack.settings("admin")):
        job_id = f"waits-{uuid.uuid4().hex}"
        await publish_job(jobs.jetstream(), Job(job_id=job_id, mode="ok"))
        # more tries than the consumer has deliveries: an outage does not use them up
        await eventually(lambda: _at_least(attempts, WORKER.max_deliveries + 2))
        assert not done
        async with running(build_registry_copy(), stack.settings("planner")):
            await eventually(lambda: _at_least(done, 1))
    assert done == [job_id] and set(attempts) == {1}
    info = await jobs.jetstream().consumer_info(JOBS.name, WORKER.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert await _dead_letter(jobs, job_id) is None


async def test_a_dependency_away_past_the_deadline_parks_the_message_naming_it(stack: Stack, jobs: Client) -> None:
    attempts: list[int] = []
    done: list[str] = []
    settings = stack.settings("admin", transient_retry_deadline=0.5)
    async with running(asks_the_planner(attempts, done), settings):
        job_id = f"gives-up-{uuid.uuid4().hex}"
        await publish_job(jobs.jetstream(), Job(job_id=job_id, mode="ok"))
        letter = await eventually(lambda: _dead_letter(jobs, job_id))
    assert not done and set(attempts) == {1}
    assert "did not answer for 0.5 s" in letter.reason and "no planner actor is running" in letter.reason, letter.reason


async def _at_least(values: list[int] | list[str], count: int) -> bool:
    return len(values) >= count


async def _dead_letter(nc: Client, job_id: str) -> DeadLetter | None:
    js = nc.jetstream()
    subject = DEAD_LETTERS.subject(stream=JOBS.name, consumer=WORKER.durable)
    try:
        found = await js.get_last_msg("DEADLETTER", subject)
    except nats.js.errors.NotFoundError:
        return None
    letter = decode(DeadLetter, found.data or b"")
    return letter if decode(Job, letter.payload).job_id == job_id else None
