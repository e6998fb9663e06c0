"""The build registry's read model on the bus: each build's summary in the BUILD_SUMMARIES bucket.

The projection (Postgres) stays the truth; after every change the row as it now stands is written to the
bucket under `<org_id>.<build_id>`, never over a newer one (compare-and-set on the entry's revision,
ordered by the summary's `last_seq`), so copies of the planner applying events concurrently cannot move a
build's summary backwards. The gateway reads it with one JetStream direct get per request.
"""

from __future__ import annotations

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from actors.runtime.codec import decode, encode
from bus_schemas.builds import BuildSummary
from bus_schemas.registry import build_summary_key

_ATTEMPTS = 8


async def publish_summary(kv: KeyValue, summary: BuildSummary) -> None:
    """Write `summary` unless the bucket holds a summary of the same build at least as recent."""
    key = build_summary_key(summary.org_id, summary.build_id)
    data = encode(summary)
    for _ in range(_ATTEMPTS):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            try:
                await kv.create(key, data)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another copy created it first: compare with theirs
        try:
            current = decode(BuildSummary, entry.value or b"")
        except (msgspec.ValidationError, msgspec.DecodeError):
            current = None
        if current is not None and current.last_seq >= summary.last_seq:
            return
        try:
            await kv.update(key, data, last=entry.revision)
            return
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
    raise RuntimeError(f"the summary of build {summary.build_id} kept changing under {_ATTEMPTS} writes")
