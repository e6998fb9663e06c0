"""The bus contract as documents: an AsyncAPI 3.0 description of every subject, and a JSON Schema snapshot.

Both are generated from `bus_schemas.registry` alone, so they cannot drift from the code; the snapshot is
committed (bus_schemas/contract.schema.json) and a test fails when a message changes shape without it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import msgspec

from bus_schemas.base import Message
from bus_schemas.builds import BuildKind
from bus_schemas.registry import (
    ALL_MESSAGES,
    CONSUMERS,
    EVENT_SUBJECTS,
    RPCS,
    STREAMS,
    EventSubject,
    Rpc,
)

CONTRACT_SNAPSHOT = Path(__file__).resolve().parent.parent / "bus_schemas" / "contract.schema.json"
"""Where the committed JSON Schema snapshot of the contract lives."""

UPDATE_SNAPSHOT_COMMAND = "bmms schema --format jsonschema --out bus_schemas/contract.schema.json"
"""The command that regenerates the committed snapshot."""

_PLACEHOLDER = re.compile(r"\{(\w+)\}")

# What each subject placeholder may hold, where the registry knows the full set of values.
_PARAMETER_ENUMS: dict[str, tuple[str, ...]] = {
    "kind": tuple(get_args(BuildKind)),
    "stream": tuple(s.name for s in STREAMS),
    "consumer": tuple(c.durable for c in CONSUMERS),
}
_PARAMETER_DESCRIPTIONS: dict[str, str] = {
    "org": "Organisation id.",
    "build": "Build id.",
    "kind": "Which event of the build.",
    "server": "Id of the deployed MCP server.",
    "stream": "The stream the parked message came from.",
    "consumer": "The durable consumer that gave up on it.",
}


def message_types() -> list[type[Message]]:
    """Every concrete bus message type, in a stable order (by name)."""
    return sorted(ALL_MESSAGES, key=lambda t: t.__name__)


def union_members(union: Any) -> list[type[Message]]:
    """The message types of a declared message or union of messages."""
    return [t for t in getattr(union, "__args__", (union,)) if isinstance(t, type) and issubclass(t, Message)]


def subject_parameters(pattern: str) -> list[str]:
    """The `{name}` placeholders of a subject pattern, in order."""
    return _PLACEHOLDER.findall(pattern)


def _schemas(ref_template: str) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(message_types(), ref_template=ref_template)
    return dict(sorted(components.items()))


def _channel_id(name: str) -> str:
    # AsyncAPI component ids must match ^[A-Za-z0-9.\-_]+$ and read well in $refs: dots become underscores.
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _event_channel_name(event: EventSubject[Any]) -> str:
    return _channel_id(event.pattern.split(".", 1)[0] + "_events")


def _message_refs(types: list[type[Message]]) -> dict[str, dict[str, str]]:
    return {t.__name__: {"$ref": f"#/components/messages/{t.__name__}"} for t in types}


def _operation_messages(channel: str, types: list[type[Message]]) -> list[dict[str, str]]:
    return [{"$ref": f"#/channels/{channel}/messages/{t.__name__}"} for t in types]


def _parameters(pattern: str) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for name in subject_parameters(pattern):
        param: dict[str, Any] = {"description": _PARAMETER_DESCRIPTIONS.get(name, f"The {name} token.")}
        if name in _PARAMETER_ENUMS:
            param["enum"] = list(_PARAMETER_ENUMS[name])
        params[name] = param
    return params


def asyncapi_document(version: str = "0.1.0") -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the bus, seen from a client: it sends RPC requests (receiving the
    reply on its inbox) and receives events."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event in EVENT_SUBJECTS:
        name = _event_channel_name(event)
        types = union_members(event.message)
        channels[name] = {
            "address": event.pattern,
            "description": event.description,
            "parameters": _parameters(event.pattern),
            "messages": _message_refs(types),
        }
        operations[f"receive_{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": event.description,
            "messages": _operation_messages(name, types),
        }
    for rpc in RPCS:
        request_channel, reply_channel = _rpc_channel_names(rpc)
        request_types = union_members(rpc.request)
        reply_types = union_members(rpc.reply)
        channels[request_channel] = {
            "address": rpc.subject,
            "description": f"{rpc.description} Served by the `{rpc.service}` service, queue group `{rpc.service}`.",
            "messages": _message_refs(request_types),
        }
        # The reply goes to the caller's own inbox, so its address is only known at run time.
        channels[reply_channel] = {
            "address": None,
            "description": f"Reply to {rpc.subject}, sent to the requester's inbox.",
            "messages": _message_refs(reply_types),
        }
        operations[_channel_id(f"{rpc.service}_{rpc.endpoint}")] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{request_channel}"},
            "summary": rpc.description,
            "messages": _operation_messages(request_channel, request_types),
            "reply": {
                "channel": {"$ref": f"#/channels/{reply_channel}"},
                "messages": _operation_messages(reply_channel, reply_types),
            },
        }
    messages = {
        t.__name__: {
            "name": t.__name__,
            "title": t.__name__,
            "summary": (t.__doc__ or "").strip().splitlines()[0] if t.__doc__ else "",
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{t.__name__}"},
        }
        for t in message_types()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Build My MCP Server bus",
            "version": version,
            "description": (
                "Every NATS subject of the platform and the msgspec messages on it. "
                "Generated from bus_schemas.registry by `bmms schema`; do not edit by hand."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "dev": {"host": "127.0.0.1:4222", "protocol": "nats", "description": "A `bmms dev` stack."},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas("#/components/schemas/{name}")},
    }


def _rpc_channel_names(rpc: Rpc[Any, Any]) -> tuple[str, str]:
    base = _channel_id(rpc.subject)
    return base, f"{base}_reply"


def contract_schema() -> dict[str, Any]:
    """The JSON Schema snapshot of the whole contract: every message's schema plus where it travels."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Build My MCP Server bus contract",
        "description": f"Generated by `{UPDATE_SNAPSHOT_COMMAND}`; do not edit by hand.",
        "anyOf": [{"$ref": f"#/$defs/{t.__name__}"} for t in message_types()],
        "$defs": _schemas("#/$defs/{name}"),
        "x-subjects": {
            e.pattern: {"messages": [t.__name__ for t in union_members(e.message)]} for e in EVENT_SUBJECTS
        },
        "x-rpcs": {
            r.subject: {
                "service": r.service,
                "endpoint": r.endpoint,
                "request": [t.__name__ for t in union_members(r.request)],
                "reply": [t.__name__ for t in union_members(r.reply)],
            }
            for r in RPCS
        },
        "x-streams": {s.name: {"subjects": list(s.subjects)} for s in STREAMS},
        "x-consumers": {
            f"{c.stream.name}/{c.durable}": {"filter_subjects": list(c.filter_subjects), "owner": c.owner}
            for c in CONSUMERS
        },
    }


def render(document: dict[str, Any]) -> str:
    """The document as stable, reviewable JSON (sorted keys would scramble the AsyncAPI order, so the
    builders above produce a deterministic order instead)."""
    return msgspec.json.format(msgspec.json.encode(document), indent=2).decode() + "\n"
