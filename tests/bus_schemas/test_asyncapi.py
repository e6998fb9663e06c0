"""The AsyncAPI document describes every registry subject and references only what it defines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from bus_schemas.registry import ALL_MESSAGES, EVENT_SUBJECTS, RPCS
from ops.asyncapi import asyncapi_document, render, subject_parameters


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # Through render and back, so the test sees exactly what `bmms schema` writes.
    parsed: dict[str, Any] = json.loads(render(asyncapi_document()))
    return parsed


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert part in node, f"{ref} points at nothing"
        node = node[part]
    return node


def test_document_is_asyncapi_3(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]


def test_every_registry_subject_is_a_channel(document: dict[str, Any]) -> None:
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {e.pattern for e in EVENT_SUBJECTS} <= addresses
    assert {r.subject for r in RPCS} <= addresses


def test_every_subject_placeholder_is_a_channel_parameter(document: dict[str, Any]) -> None:
    for channel in document["channels"].values():
        address = channel["address"]
        if address is None:
            continue
        assert sorted(channel.get("parameters", {})) == sorted(subject_parameters(address))
    build_events = next(c for c in document["channels"].values() if c["address"] == "builds.{org}.{build}.{kind}")
    assert "requested" in build_events["parameters"]["kind"]["enum"]


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = list(_refs(document))
    assert refs
    for ref in refs:
        _resolve(document, ref)


def test_every_message_has_a_payload_schema(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    assert set(messages) == {t.__name__ for t in ALL_MESSAGES}
    for message in messages.values():
        assert _resolve(document, message["payload"]["$ref"])["type"] == "object"


def test_operations_send_requests_and_receive_events(document: dict[str, Any]) -> None:
    actions = [op["action"] for op in document["operations"].values()]
    assert actions.count("send") == len(RPCS)
    assert actions.count("receive") == len(EVENT_SUBJECTS)
    for op in document["operations"].values():
        channel = _resolve(document, op["channel"]["$ref"])
        for message_ref in op["messages"]:
            # AsyncAPI 3: an operation's messages must be messages of its own channel.
            assert message_ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
            assert _resolve(document, message_ref["$ref"]) is not None
        assert channel is not None
