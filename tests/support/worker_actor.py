"""A test-only actor used to exercise the runtime's delivery rules in a real child process.

It consumes its own test stream (declared here, not in the registry, since it is not part of the
product) and records every delivery and every applied effect in Postgres.
"""

from __future__ import annotations

import asyncio
import os
from typing import Literal

import asyncpg

from actors.runtime.actor import Actor, Context
from actors.runtime.process import run_until_signalled
from actors.runtime.settings import load_settings
from bus_schemas.base import Message
from bus_schemas.registry import Consumer, Stream

JOBS = Stream(name="TESTJOBS", subjects=("testjobs.>",), description="runtime test jobs", duplicate_window_seconds=60)
WORKER = Consumer(
    stream=JOBS,
    durable="worker",
    filter_subject="testjobs.>",
    message=None,  # set below, after Job exists
    owner="worker",
    description="test worker",
    max_deliveries=3,
    ack_wait_seconds=2.0,
    backoff_seconds=(0.1, 0.2),
)


class Job(Message, frozen=True, kw_only=True, tag="test.job.v1"):
    """A unit of test work; `mode` says how the worker should behave."""

    job_id: str
    mode: Literal["ok", "hang_first", "fail", "slow", "crash", "long"]


WORKER = Consumer(**{**WORKER.__dict__, "message": Job})

SCHEMA = """
CREATE TABLE IF NOT EXISTS test_job_deliveries (job_id text, pid int, delivery int, at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS test_job_effects (job_id text PRIMARY KEY, pid int);
"""


def create_worker(dsn: str) -> Actor:
    """The worker actor; it records deliveries and applies each job's effect idempotently."""
    actor = Actor("worker")
    pool: list[asyncpg.Pool] = []

    async def db() -> asyncpg.Pool:
        if not pool:
            pool.append(await asyncpg.create_pool(dsn, min_size=1, max_size=4))
        return pool[0]

    @actor.consumer(WORKER)
    async def work(job: Job, ctx: Context) -> None:
        assert ctx.delivery is not None
        conn = await db()
        await conn.execute(
            "INSERT INTO test_job_deliveries (job_id, pid, delivery) VALUES ($1, $2, $3)",
            job.job_id, os.getpid(), ctx.delivery.deliveries,
        )
        if job.mode == "hang_first" and ctx.delivery.deliveries == 1:
            await asyncio.Event().wait()  # hold the message until this process is killed
        if job.mode == "crash":
            os._exit(3)  # die holding the message, every time: a crash loop
        if job.mode == "fail":
            raise RuntimeError(f"job {job.job_id} always fails")
        if job.mode == "slow":
            await asyncio.sleep(1.0)  # long enough for the test to stop the process mid-job
        if job.mode == "long":
            async with ctx.heartbeat():  # at its default pace
                await asyncio.sleep(3 * WORKER.ack_wait_seconds)
        await conn.execute(
            "INSERT INTO test_job_effects (job_id, pid) VALUES ($1, $2) ON CONFLICT (job_id) DO NOTHING",
            job.job_id, os.getpid(),
        )

    return actor


if __name__ == "__main__":
    settings = load_settings()
    assert settings.database_url
    worker = create_worker(settings.database_url)

    async def main(stop: asyncio.Event) -> None:
        task = asyncio.create_task(worker.serve(settings, stop))
        await worker.ready.wait()
        print("ready", flush=True)
        await task

    run_until_signalled(settings, main)
