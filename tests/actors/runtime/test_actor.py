"""The actor runtime's promises, on a real nats-server and PostgreSQL, with real child processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client

from actors.catalog import create_actor
from actors.runtime.actor import Actor, Batch, Context
from actors.runtime.bus import call, consumer_config, publish_event, stream_config
from actors.runtime.codec import decode
from actors.runtime.logs import trace_id_var
from bus_schemas.base import Failed
from bus_schemas.builds import AnyBuildEvent, BuildAccepted, BuildRequested, GetBuild, PlainWords, SubmitBuild
from bus_schemas.ops import DeadLetter
from bus_schemas.registry import BUILD_EVENTS, DEAD_LETTERS, GET_BUILD, SUBMIT_BUILD, TRACE_HEADER
from tests.conftest import Stack, eventually, running
from tests.support.worker_actor import JOBS, SCHEMA, WORKER, Job

# --- request/reply ---


async def _service_replies(nc: Client, subject: str, expected: int) -> list[dict[str, object]]:
    """Collect `expected` answers to a $SRV discovery request (one per running copy)."""
    inbox = nc.new_inbox()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: nats.aio.msg.Msg) -> None:
        await replies.put(msg.data)

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, b"", reply=inbox)
    answers = [msgspec.json.decode(await asyncio.wait_for(replies.get(), 5)) for _ in range(expected)]
    await sub.unsubscribe()
    return answers


async def test_two_copies_of_an_actor_share_requests_and_both_are_discoverable(stack: Stack, admin_nc: Client) -> None:
    first, second = create_actor("planner"), create_actor("planner")
    async with running(first, stack.settings("planner")), running(second, stack.settings("planner")):
        pings = await _service_replies(admin_nc, "$SRV.PING.planner", expected=2)
        assert len({p["id"] for p in pings}) == 2
        for _ in range(60):
            reply = await call(admin_nc, GET_BUILD, GetBuild(org_id="nobody", build_id="b0"), timeout=5)
            assert isinstance(reply, Failed) and reply.code == "not_found"
        stats = await _service_replies(admin_nc, "$SRV.STATS.planner", expected=2)
        served = [
            next(e["num_requests"] for e in s["endpoints"] if e["name"] == "get_build")  # type: ignore[index]
            for s in stats
        ]
        assert sum(served) >= 60 and all(n > 0 for n in served), served


async def test_malformed_rpc_request_gets_a_failed_reply_naming_the_field(stack: Stack, admin_nc: Client) -> None:
    async with running(create_actor("planner"), stack.settings("planner")):
        bad = msgspec.json.encode({"type": "builds.get.v1", "org_id": "org 1", "build_id": "b1"})
        reply = decode(GET_BUILD.reply, (await admin_nc.request(GET_BUILD.subject, bad, timeout=5)).data)
        assert isinstance(reply, Failed) and reply.code == "invalid"
        assert "$.org_id" in reply.detail
        garbage = decode(GET_BUILD.reply, (await admin_nc.request(GET_BUILD.subject, b"{not json", timeout=5)).data)
        assert isinstance(garbage, Failed) and garbage.code == "invalid"


async def test_trace_id_travels_from_the_caller_through_the_actor_into_published_events(
    stack: Stack, admin_nc: Client
) -> None:
    async with running(create_actor("planner"), stack.settings("planner")):
        token = trace_id_var.set("0af7651916cd43dd8448eb211c80319c")
        try:
            request = SubmitBuild(org_id="tr", requested_by="t", name="x", source=PlainWords(text="x"))
            accepted = await call(admin_nc, SUBMIT_BUILD, request, timeout=5)
        finally:
            trace_id_var.reset(token)
        assert isinstance(accepted, BuildAccepted)
        js = admin_nc.jetstream()
        msg = await js.get_last_msg("BUILDS", BUILD_EVENTS.subject(org="tr", build=accepted.build_id, kind="requested"))
        assert msg.headers is not None and msg.headers[TRACE_HEADER] == "0af7651916cd43dd8448eb211c80319c"
        assert isinstance(decode(AnyBuildEvent, msg.data), BuildRequested)


# --- pipeline consumers, with the worker in real child processes ---


@pytest.fixture
async def jobs(stack: Stack, admin_nc: Client, db: asyncpg.Connection) -> AsyncIterator[Client]:
    """A fresh test stream with the worker's durable consumer, and empty effect tables."""
    js = admin_nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(JOBS.name)
    await js.add_stream(stream_config(JOBS))
    await js.add_consumer(JOBS.name, consumer_config(WORKER))
    await db.execute(SCHEMA + "TRUNCATE test_job_deliveries; TRUNCATE test_job_effects;")
    yield admin_nc


class Worker:
    """A worker actor in its own OS process."""

    def __init__(self, stack: Stack) -> None:
        env = stack.env("admin")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.worker_actor"], env=env, stdout=subprocess.PIPE, text=True
        )

    async def ready(self) -> None:
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 30)  # type: ignore[union-attr]
        assert line.strip() == "ready", line

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


async def publish_job(js: nats.js.JetStreamContext, job: Job) -> None:
    await publish_event(js, f"testjobs.{job.job_id}", job, msg_id=job.job_id)


async def test_job_held_by_a_killed_copy_is_redelivered_to_another_and_applied_once(
    stack: Stack, jobs: Client, db: asyncpg.Connection
) -> None:
    first, second = Worker(stack), Worker(stack)
    try:
        await asyncio.gather(first.ready(), second.ready())
        job = Job(job_id=f"j{uuid.uuid4().hex[:8]}", mode="hang_first")
        await publish_job(jobs.jetstream(), job)
        holder = await eventually(
            lambda: db.fetchval("SELECT pid FROM test_job_deliveries WHERE job_id = $1", job.job_id)
        )
        victim, survivor = (first, second) if holder == first.process.pid else (second, first)
        victim.kill()
        await eventually(lambda: db.fetchval("SELECT pid FROM test_job_effects WHERE job_id = $1", job.job_id))
        effects = await db.fetch("SELECT pid FROM test_job_effects WHERE job_id = $1", job.job_id)
        assert [r["pid"] for r in effects] == [survivor.process.pid]
        deliveries = await db.fetch(
            "SELECT pid, delivery FROM test_job_deliveries WHERE job_id = $1 ORDER BY at", job.job_id
        )
        assert deliveries[0]["pid"] == victim.process.pid and deliveries[0]["delivery"] == 1
        assert deliveries[-1]["pid"] == survivor.process.pid and deliveries[-1]["delivery"] >= 2
    finally:
        for w in (first, second):
            if w.process.poll() is None:
                w.stop()


async def test_a_job_that_outlasts_the_ack_wait_while_beating_is_delivered_once(
    stack: Stack, jobs: Client, db: asyncpg.Connection
) -> None:
    # The heartbeat's default pace follows the consumer's ack wait (2 s here), so a long job is not handed to
    # the other copy meanwhile; a fixed pace slower than the wait would let JetStream redeliver it.
    first, second = Worker(stack), Worker(stack)
    try:
        await asyncio.gather(first.ready(), second.ready())
        job = Job(job_id=f"l{uuid.uuid4().hex[:8]}", mode="long")
        await publish_job(jobs.jetstream(), job)
        await eventually(lambda: db.fetchval("SELECT pid FROM test_job_effects WHERE job_id = $1", job.job_id),
                         timeout=30)
        deliveries = await db.fetch("SELECT pid, delivery FROM test_job_deliveries WHERE job_id = $1", job.job_id)
        assert [r["delivery"] for r in deliveries] == [1]
    finally:
        for w in (first, second):
            if w.process.poll() is None:
                w.stop()


async def _dead_letters(nc: Client, count: int) -> list[DeadLetter]:
    js = nc.jetstream()
    sub = await js.subscribe(DEAD_LETTERS.subject(stream=JOBS.name, consumer=WORKER.durable), ordered_consumer=True)
    letters = [decode(DeadLetter, (await sub.next_msg(timeout=20)).data) for _ in range(count)]
    await sub.unsubscribe()
    return letters


async def test_poison_and_always_failing_messages_are_parked_and_the_consumer_keeps_going(
    stack: Stack, jobs: Client, db: asyncpg.Connection
) -> None:
    js = jobs.jetstream()
    # a dead letter from an earlier test run of this stream must not count: start from what exists now
    info = await js.stream_info("DEADLETTER")
    worker = Worker(stack)
    try:
        await worker.ready()
        await js.publish("testjobs.poison", b"{this is not a job", headers={"Nats-Msg-Id": uuid.uuid4().hex})
        failing = Job(job_id=f"f{uuid.uuid4().hex[:8]}", mode="fail")
        await publish_job(js, failing)
        good = Job(job_id=f"g{uuid.uuid4().hex[:8]}", mode="ok")
        await publish_job(js, good)

        await eventually(lambda: db.fetchval("SELECT 1 FROM test_job_effects WHERE job_id = $1", good.job_id))
        sub = await js.subscribe(
            DEAD_LETTERS.subject(stream=JOBS.name, consumer=WORKER.durable),
            ordered_consumer=True,
            config=nats.js.api.ConsumerConfig(
                deliver_policy=nats.js.api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=info.state.last_seq + 1
            ),
        )
        letters = [decode(DeadLetter, (await sub.next_msg(timeout=20)).data) for _ in range(2)]
        await sub.unsubscribe()
        by_subject = {letter.subject: letter for letter in letters}
        poison = by_subject["testjobs.poison"]
        assert poison.reason.startswith("undecodable message") and poison.deliveries == 1
        assert poison.payload == b"{this is not a job"
        failed = by_subject[f"testjobs.{failing.job_id}"]
        assert failed.deliveries == WORKER.max_deliveries
        assert "always fails" in failed.reason
        tries = await db.fetchval("SELECT count(*) FROM test_job_deliveries WHERE job_id = $1", failing.job_id)
        assert tries == WORKER.max_deliveries
        assert worker.process.poll() is None  # no crash loop: the worker is still serving
        # parked messages are terminated: nothing is left pending for the consumer
        consumer = await js.consumer_info(JOBS.name, WORKER.durable)
        assert consumer.num_ack_pending == 0 and consumer.num_pending == 0
    finally:
        assert worker.stop() == 0


async def test_sigterm_lets_the_job_in_flight_finish_before_the_copy_exits(
    stack: Stack, jobs: Client, db: asyncpg.Connection
) -> None:
    worker = Worker(stack)
    try:
        await worker.ready()
        job = Job(job_id=f"s{uuid.uuid4().hex[:8]}", mode="slow")
        await publish_job(jobs.jetstream(), job)
        await eventually(lambda: db.fetchval("SELECT 1 FROM test_job_deliveries WHERE job_id = $1", job.job_id))
        exit_code = await asyncio.to_thread(worker.stop)
        assert exit_code == 0
        assert await db.fetchval("SELECT count(*) FROM test_job_effects WHERE job_id = $1", job.job_id) == 1
        consumer = await jobs.jetstream().consumer_info(JOBS.name, WORKER.durable)
        assert consumer.num_ack_pending == 0  # acked before exit, not left for redelivery
    finally:
        if worker.process.poll() is None:
            worker.kill()


async def test_message_that_crashes_every_copy_is_parked_instead_of_crash_looping(
    stack: Stack, jobs: Client, db: asyncpg.Connection
) -> None:
    js = jobs.jetstream()
    job = Job(job_id=f"c{uuid.uuid4().hex[:8]}", mode="crash")
    await publish_job(js, job)
    letter_subject = DEAD_LETTERS.subject(stream=JOBS.name, consumer=WORKER.durable)

    async def parked() -> DeadLetter | None:
        try:
            letter = decode(DeadLetter, (await js.get_last_msg("DEADLETTER", letter_subject)).data)
        except nats.js.errors.NotFoundError:
            return None
        return letter if letter.subject == f"testjobs.{job.job_id}" else None

    crashed_copies = 0
    letter: DeadLetter | None = None
    # An operator's supervisor restarts each copy that dies; the runtime must end the loop by itself.
    while letter is None and crashed_copies <= WORKER.max_deliveries + 1:
        worker = Worker(stack)
        exited = asyncio.create_task(asyncio.to_thread(worker.process.wait, 30))
        while not exited.done() and letter is None:
            letter = await parked()
            await asyncio.wait({exited}, timeout=0.1)
        if exited.done():
            assert exited.result() == 3
            crashed_copies += 1
        else:
            assert worker.stop() == 0  # the survivor parked the job and kept serving
            await exited
    assert letter is not None, "the crashing job was never parked"
    assert "without an answer" in letter.reason
    assert letter.deliveries == WORKER.max_deliveries + 1
    assert crashed_copies == WORKER.max_deliveries


# --- batch consumers ---


async def test_a_lingering_batch_takes_what_arrives_within_the_linger_in_one_handler_call(
    stack: Stack, jobs: Client
) -> None:
    js = jobs.jetstream()
    batches: list[list[str]] = []
    actor = Actor("worker")

    @actor.batch_consumer(WORKER, max_batch=100, linger=0.4)
    async def work(batch: Batch[Job], ctx: Context) -> None:
        batches.append([item.message.job_id for item in batch])

    async with running(actor, stack.settings("admin")):
        await publish_job(js, Job(job_id="first", mode="ok"))
        await asyncio.sleep(0.1)  # within the linger that the first message started
        for i in range(5):
            await publish_job(js, Job(job_id=f"later-{i}", mode="ok"))
        async def handled(count: int) -> bool | None:
            return sum(map(len, batches)) >= count or None

        await eventually(lambda: handled(6))
        assert batches == [["first", *(f"later-{i}" for i in range(5))]]
        await publish_job(js, Job(job_id="next", mode="ok"))  # a new batch, after the first was handled
        await eventually(lambda: handled(7))
    assert batches[1] == ["next"]
    info = await js.consumer_info(JOBS.name, WORKER.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0  # every message of both batches acked
