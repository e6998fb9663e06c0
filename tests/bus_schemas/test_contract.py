"""The wire contract: every message round-trips, unions decode to the right type, bad input is refused
with the failing path named, and the committed schema snapshot matches the code."""

from __future__ import annotations

import json
from typing import Any, get_args

import msgspec
import pytest

from actors.runtime.codec import decode, encode
from bus_schemas.base import Failed
from bus_schemas.builds import BUILD_KINDS, AnyBuildEvent, BuildKind, PlainWords, SubmitBuild
from bus_schemas.registry import ALL_MESSAGES, CONSUMERS, EVENT_SUBJECTS, RPCS
from ops.asyncapi import CONTRACT_SNAPSHOT, UPDATE_SNAPSHOT_COMMAND, contract_schema, render, union_members
from tests.bus_schemas.samples import samples

MESSAGES = sorted(ALL_MESSAGES, key=lambda t: t.__name__)
UNIONS: dict[str, Any] = {
    **{f"reply of {r.subject}": r.reply for r in RPCS},
    **{f"events on {e.pattern}": e.message for e in EVENT_SUBJECTS},
    **{f"consumer {c.durable}": c.message for c in CONSUMERS},
}


def test_the_registry_declares_messages() -> None:
    # Guards the generic tests below against silently iterating over nothing.
    assert len(MESSAGES) >= 10


@pytest.mark.parametrize("message_type", MESSAGES, ids=lambda t: t.__name__)
def test_every_message_round_trips_through_the_bus_codec(message_type: type[Any]) -> None:
    for sample in samples(message_type):
        assert decode(message_type, encode(sample)) == sample


@pytest.mark.parametrize("union", list(UNIONS.values()), ids=list(UNIONS))
def test_tagged_union_members_decode_to_their_own_type(union: Any) -> None:
    for member in union_members(union):
        for sample in samples(member):
            decoded = decode(union, encode(sample))
            assert type(decoded) is member
            assert decoded == sample


def test_every_message_tag_is_unique_and_versioned() -> None:
    tags = [msgspec.inspect.type_info(t).tag for t in MESSAGES]  # type: ignore[attr-defined]
    assert len(tags) == len(set(tags))
    assert all(isinstance(tag, str) and tag.rsplit(".", 1)[-1].startswith("v") for tag in tags)


def _submit(**changes: Any) -> bytes:
    # Built from a real message, so the test follows the contract's tag fields and names.
    raw = msgspec.to_builtins(
        SubmitBuild(org_id="org1", requested_by="tester", name="weather", source=PlainWords(text="a weather server"))
    )
    raw.update(changes)
    return json.dumps(raw).encode()


def _source(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = msgspec.to_builtins(PlainWords(text="x"))
    raw.update(changes)
    return raw


SOURCE_TAG = msgspec.inspect.type_info(PlainWords).tag_field  # type: ignore[attr-defined]


def test_bad_json_is_rejected() -> None:
    with pytest.raises(msgspec.DecodeError, match=r"JSON is malformed: .* \(byte \d+\)"):
        decode(SubmitBuild, b'{"type": "builds.submit.v1", "org_id": nope}')
    with pytest.raises(msgspec.DecodeError, match="truncated"):
        decode(SubmitBuild, b'{"type": "builds.submit.v1", "org_id": ')


def test_a_missing_field_is_rejected_naming_it() -> None:
    raw = json.loads(_submit())
    del raw["requested_by"]
    with pytest.raises(msgspec.ValidationError, match=r"missing required field `requested_by`"):
        decode(SubmitBuild, json.dumps(raw).encode())


def test_a_wrong_type_is_rejected_naming_the_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Expected `str`, got `int` - at `\$\.source\.text`"):
        decode(SubmitBuild, _submit(source=_source(text=42)))


def test_an_unsafe_subject_token_is_rejected_naming_the_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.org_id`"):
        decode(SubmitBuild, _submit(org_id="org.>"))


def test_a_wrong_tag_is_rejected_naming_the_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"Invalid value 'nonsense' - at `\$\.source\.{SOURCE_TAG}`"):
        decode(SubmitBuild, _submit(source=_source(**{SOURCE_TAG: "nonsense"})))


def test_a_message_of_another_type_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.type`"):
        decode(AnyBuildEvent, _submit())


def test_committed_contract_snapshot_matches_the_code() -> None:
    current = render(contract_schema())
    committed = CONTRACT_SNAPSHOT.read_text() if CONTRACT_SNAPSHOT.exists() else ""
    assert committed == current, (
        "the bus contract changed shape without its snapshot. If the change is intended (new fields need "
        f"defaults, field types never change), run `{UPDATE_SNAPSHOT_COMMAND}` and commit the result."
    )


def test_contract_snapshot_is_valid_json_schema_naming_every_message() -> None:
    schema = json.loads(render(contract_schema()))
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {t.__name__ for t in MESSAGES} <= set(schema["$defs"])
    refs = {entry["$ref"].rsplit("/", 1)[-1] for entry in schema["anyOf"]}
    assert refs == {t.__name__ for t in MESSAGES}


def test_an_unknown_failure_code_is_rejected_where_it_is_decoded() -> None:
    known = {"type": "failed.v1", "code": "unavailable", "detail": "the oauth actor did not answer"}
    assert decode(Failed, json.dumps(known).encode()).code == "unavailable"
    with pytest.raises(msgspec.ValidationError, match=r"Invalid enum value 'backend_failed' - at `\$\.code`"):
        decode(Failed, json.dumps({**known, "code": "backend_failed"}).encode())
    failed = {"type": "build.failed.v1", "build_id": "b1", "org_id": "o1", "at": "2026-01-01T00:00:00Z",
              "step": "deploy", "code": "unhealthy", "detail": "version 2 failed its health check"}
    assert decode(AnyBuildEvent, json.dumps(failed).encode()).code == "unhealthy"  # a step's own code
    for field, value in (("code", "unhealty"), ("step", "deploying")):
        with pytest.raises(msgspec.ValidationError, match=rf"at `\$\.{field}`"):
            decode(AnyBuildEvent, json.dumps({**failed, field: value}).encode())


def test_a_log_line_of_an_unknown_step_is_rejected() -> None:
    line = {"type": "build.log.v1", "build_id": "b1", "org_id": "o1", "at": "2026-01-01T00:00:00Z",
            "step": "check", "level": "info", "message": "check: passed"}
    assert decode(AnyBuildEvent, json.dumps(line).encode()).step == "check"
    with pytest.raises(msgspec.ValidationError, match=r"Invalid enum value 'bench' - at `\$\.step`"):
        decode(AnyBuildEvent, json.dumps({**line, "step": "bench"}).encode())


def test_every_build_event_type_has_its_own_kind_and_every_kind_a_type() -> None:
    kinds = [BUILD_KINDS[event_type] for event_type in get_args(AnyBuildEvent)]
    assert sorted(kinds) == sorted(get_args(BuildKind))
    for event_type, kind in BUILD_KINDS.items():
        assert str(event_type.__struct_config__.tag).startswith(f"build.{kind}.")
