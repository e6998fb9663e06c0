"""nats.conf and the bus registry agree, in both directions (issue 14, point 4).

The registry (`bus_schemas/registry.py`) names every subject, stream, consumer, bucket and RPC, and says who
serves each RPC (`Rpc.service`), who owns each durable consumer (`Consumer.owner`) and who writes each bucket
(`KvBucket.owner`, `ObjectBucket.owner`). What it does not say is declared here, in `USES`, by registry object and
never by subject string: who calls an RPC (`OPERATOR_RPCS`: only operators, as the unrestricted admin user), who
publishes which build event, and who reads a stream or bucket and how. From both, `expected_grants` derives, in
NATS subjects and following what nats-py sends for each kind of access, what every role needs and what it may
be given. nats.conf, read by a small parser of its format, is then held to that:

- missing: every subject a role needs is matched by one of its allow patterns;
- unexplained: every allow pattern of a role is covered by something it may be given, or is a wildcard whose
  registry subjects are all its own (`rpc.auth.>` for auth), so a stale, misspelt or misplaced grant fails;
- `allow_responses` is set exactly for the actors (each one's `nats.micro` service answers with it);
- every user is one of `ops.infra.NATS_ROLES`, and every RPC, build event kind and consumer filter has a
  publisher in `USES`, so a new registry entry fails here until someone is named for it and granted it.

JetStream API subjects (`$JS.`, `$KV.`, `$O.`) are built from the registry's stream, bucket and consumer names,
`$SRV.` ones from its services, and `_INBOX_<role>.>` is each role's own. Per kind of access, what nats-py always
sends is required; what it may send (stream info, deleting an ordered consumer, a direct get) is only permitted, so
losing such a grant is left to the tests that use it. Matching is NATS's: `*` is one token, `>` one or more.
A new kind of access (a role reading a bucket it did not read before) is a line in `USES`; the test then says
which grants nats.conf lacks.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import pytest
from nats.micro.service import ServiceVerb, control_subject

from actors.catalog import ACTORS
from bus_schemas.builds import BuildKind
from bus_schemas.registry import (
    ARTIFACTS,
    AUTHENTICATE,
    BUILD_SUMMARIES,
    BUILDS,
    CHECK_QUOTA,
    CONSUMERS,
    CONTROL_SERVER,
    CREATE_API_KEY,
    DEAD_LETTERS,
    GET_BUILD,
    GET_QUOTA,
    GET_SERVER,
    GET_SERVER_LOGS,
    GET_USAGE,
    IDENTITY_RPCS,
    ISSUE_SIGN_IN_LINK,
    KV_BUCKETS,
    LIST_SERVERS,
    MEMBERSHIP_ENDED,
    OAUTH_CREATE_CLIENT,
    OAUTH_DECIDE_CONSENT,
    OAUTH_EXCHANGE_TOKEN,
    OAUTH_GET_JWKS,
    OAUTH_MINT_SERVICE_TOKEN,
    OAUTH_REGISTER_CLIENT,
    OAUTH_REVOKE_TOKEN,
    OAUTH_START_AUTHORIZATION,
    OBJECT_BUCKETS,
    PLANS,
    PREVIEW_PLAN,
    QUOTAS,
    RESOLVE_SERVER,
    REVOKED,
    ROUTES,
    RPCS,
    SECRET_RPCS,
    SERVER_EVENTS,
    SUBMIT_BUILD,
    TOOL_USAGE,
    Consumer,
    KvBucket,
    ObjectBucket,
    Rpc,
    Stream,
    build_kind_filter,
)
from ops.infra import NATS_CONF, NATS_ROLES

Action = Literal["publish", "subscribe"]
ACTIONS: tuple[Action, ...] = ("publish", "subscribe")
ADMIN = "admin"
"""The operators' user: no permissions block, so it may do anything; the test does not check it."""

# --- nats.conf, read ---

ConfValue: TypeAlias = "dict[str, ConfValue] | list[ConfValue] | str | bool"

_SPACE = re.compile(r"(?:[ \t\r\n,;]+|#[^\n]*|//[^\n]*)*")
_KEY = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s:=\[\]{}\"',;#]+")
_KEY_SEPARATOR = re.compile(r"[ \t]*[:=]?[ \t]*")
_SCALAR = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,;\]}#]+")
_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class _ConfReader:
    """A reader of the nats-server configuration format, as much as nats.conf uses: maps (`{}`, a key followed
    by `:`, `=` or a space), arrays (`[]`), quoted and bare strings, `$VARIABLE` references (kept as text),
    booleans, `#` and `//` comments; entries are separated by newlines, commas or semicolons. `include` is
    refused rather than ignored. (No maintained Python parser of this format exists; HOCON parsers reject
    `$VARIABLE` values.)"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def document(self) -> dict[str, ConfValue]:
        return self._map(closing="")

    def _where(self) -> str:
        return f"line {self.text.count(chr(10), 0, self.pos) + 1}"

    def _skip(self, pattern: re.Pattern[str] = _SPACE) -> None:
        """Move past what `pattern` matches here (spaces and comments by default; it may match nothing)."""
        found = pattern.match(self.text, self.pos)
        assert found is not None, "the patterns skipped match the empty string"
        self.pos = found.end()

    def _token(self, pattern: re.Pattern[str], what: str) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None or not found.group():
            raise ValueError(f"nats.conf: expected {what} at {self._where()}")
        self.pos = found.end()
        token = found.group()
        if token.startswith('"'):
            decoded: str = json.loads(token)
            return decoded
        return token[1:-1] if token.startswith("'") else token

    def _map(self, closing: str) -> dict[str, ConfValue]:
        entries: dict[str, ConfValue] = {}
        while True:
            self._skip()
            ahead = self.text[self.pos : self.pos + 1]
            if ahead == closing:
                self.pos += len(ahead)
                return entries
            if ahead in ("", "}", "]"):
                raise ValueError(f"nats.conf: unexpected {ahead or 'end of file'} at {self._where()}")
            key = self._token(_KEY, "a key")
            if key == "include":
                raise ValueError(f"nats.conf: `include` at {self._where()} is not read by this test")
            self._skip(_KEY_SEPARATOR)
            entries[key] = self._value()

    def _array(self) -> list[ConfValue]:
        items: list[ConfValue] = []
        while True:
            self._skip()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return items
            items.append(self._value())

    def _value(self) -> ConfValue:
        ahead = self.text[self.pos : self.pos + 1]
        if ahead == "{":
            self.pos += 1
            return self._map(closing="}")
        if ahead == "[":
            self.pos += 1
            return self._array()
        bare = not ahead or ahead not in "\"'"
        token = self._token(_SCALAR, "a value")
        return _BOOLEANS.get(token, token) if bare else token


def parse_nats_conf(text: str) -> dict[str, ConfValue]:
    """The configuration `text` as nested dicts, lists, strings and booleans."""
    return _ConfReader(text).document()


@dataclass(frozen=True)
class Role:
    """One nats.conf user's permissions; `None` where it is unrestricted."""

    name: str
    publish: tuple[str, ...] | None
    subscribe: tuple[str, ...] | None
    allow_responses: bool

    def allowed(self, action: Action) -> tuple[str, ...] | None:
        return self.publish if action == "publish" else self.subscribe


def _as_map(value: ConfValue | None, where: str) -> dict[str, ConfValue]:
    if not isinstance(value, dict):
        raise ValueError(f"nats.conf: {where} is not a map")
    return value


def _allow_list(value: ConfValue | None, where: str) -> tuple[str, ...] | None:
    """The allow patterns of a `publish` or `subscribe` permission (a list, one subject, or `{allow: [...]}`)."""
    if value is None:
        return None
    if isinstance(value, dict):
        if "deny" in value or "allow" not in value:
            raise ValueError(f"nats.conf: {where} has deny rules or no allow list, which this test does not model")
        value = value["allow"]
    subjects = value if isinstance(value, list) else [value]
    if not all(isinstance(s, str) for s in subjects):
        raise ValueError(f"nats.conf: {where} has a subject that is not a string")
    return tuple(str(s) for s in subjects)


def read_roles(conf: dict[str, ConfValue]) -> dict[str, Role]:
    """Every user of the `authorization` block and what it may publish and subscribe to."""
    users = _as_map(conf.get("authorization"), "authorization").get("users")
    if not isinstance(users, list):
        raise ValueError("nats.conf: authorization.users is not a list")
    roles: dict[str, Role] = {}
    for entry in users:
        user = _as_map(entry, "a user")
        name = user.get("user")
        if not isinstance(name, str) or name in roles:
            raise ValueError(f"nats.conf: user {name!r} is unnamed or named twice")
        if "permissions" not in user:
            roles[name] = Role(name=name, publish=None, subscribe=None, allow_responses=False)
            continue
        permissions = _as_map(user["permissions"], f"{name}'s permissions")
        responses = permissions.get("allow_responses", False)
        roles[name] = Role(
            name=name,
            publish=_allow_list(permissions.get("publish"), f"{name}'s publish"),
            subscribe=_allow_list(permissions.get("subscribe"), f"{name}'s subscribe"),
            # `allow_responses: {max: ..., expires: ...}` allows responses too
            allow_responses=responses is True or isinstance(responses, dict),
        )
    return roles


# --- NATS subject matching ---


def covers(pattern: str, subject: str) -> bool:
    """Whether every subject that `subject` matches (it may hold wildcards) is matched by `pattern`."""
    wanted, given = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(given) > i
        if i >= len(given) or given[i] == ">" or (token != "*" and token != given[i]):
            return False
    return len(wanted) == len(given)


def intersects(first: str, second: str) -> bool:
    """Whether some subject is matched by both patterns."""
    a, b = first.split("."), second.split(".")
    for i in range(max(len(a), len(b))):
        if i < len(a) and a[i] == ">":
            return len(b) > i
        if i < len(b) and b[i] == ">":
            return len(a) > i
        if i >= len(a) or i >= len(b) or (a[i] != b[i] and "*" not in (a[i], b[i])):
            return False
    return True


# --- what the registry does not say: who calls, publishes and reads what ---


@dataclass(frozen=True)
class Uses:
    """What one role does on the bus beyond what the registry records of it (serving, owning, writing)."""

    calls: tuple[Rpc[Any, Any], ...] = ()
    publishes: tuple[str, ...] = ()
    """Event subjects it publishes, from the registry's helpers (a `*` where a token varies)."""
    follows: tuple[Stream | KvBucket | ObjectBucket, ...] = ()
    """Streams and buckets it follows with unnamed ordered consumers (builds as they happen, a bucket's keys)."""
    gets: tuple[Stream | KvBucket, ...] = ()
    """Streams and buckets it reads single messages of (the last one on a subject; a key)."""
    reads_objects: tuple[ObjectBucket, ...] = ()


OPERATOR_RPCS: tuple[Rpc[Any, Any], ...] = (CREATE_API_KEY, ISSUE_SIGN_IN_LINK, OAUTH_CREATE_CLIENT)
"""RPCs only operators call (the `bmms` CLI, as admin); no other role may."""


def _step_events(*kinds: BuildKind) -> tuple[str, ...]:
    """A pipeline step's build events: its own kinds, plus step, log and failed, which every step publishes."""
    return tuple(build_kind_filter(kind) for kind in ("step", "log", *kinds, "failed"))


USES: dict[str, Uses] = {
    ADMIN: Uses(calls=OPERATOR_RPCS),
    "gateway": Uses(
        calls=(
            SUBMIT_BUILD, GET_BUILD, PREVIEW_PLAN, AUTHENTICATE, *IDENTITY_RPCS,
            OAUTH_REGISTER_CLIENT, OAUTH_START_AUTHORIZATION, OAUTH_DECIDE_CONSENT, OAUTH_EXCHANGE_TOKEN,
            OAUTH_REVOKE_TOKEN, OAUTH_GET_JWKS,
            LIST_SERVERS, GET_SERVER, CONTROL_SERVER, GET_SERVER_LOGS, *SECRET_RPCS,
            GET_USAGE, GET_QUOTA,
        ),
        follows=(BUILDS, ROUTES),
        gets=(BUILD_SUMMARIES,),
    ),
    "auth": Uses(publishes=(MEMBERSHIP_ENDED.wildcard(),)),
    "oauth": Uses(calls=(RESOLVE_SERVER,)),
    # the build registry publishes `requested`, the planning step the rest
    "planner": Uses(calls=(CHECK_QUOTA,), publishes=(build_kind_filter("requested"), *_step_events("planned"))),
    "codegen": Uses(publishes=_step_events("generated"), reads_objects=(PLANS,)),
    "checker": Uses(publishes=_step_events("checked"), reads_objects=(ARTIFACTS, PLANS)),
    "deployer": Uses(
        calls=(OAUTH_MINT_SERVICE_TOKEN, CHECK_QUOTA),
        publishes=(*_step_events("deployed"), SERVER_EVENTS.wildcard()),
        gets=(BUILDS,),  # a build's `requested` event: the last message on its subject
        reads_objects=(ARTIFACTS,),
    ),
    "events": Uses(follows=(BUILDS,)),
    "runner": Uses(calls=(OAUTH_GET_JWKS,), publishes=(TOOL_USAGE.wildcard(),), follows=(QUOTAS, REVOKED)),
}


# --- what each role needs and may be given, in NATS subjects ---


@dataclass(frozen=True)
class Grant:
    """A subject a role needs (or, not `required`, may be given), and the registry declaration behind it."""

    action: Action
    subject: str
    reason: str
    required: bool = True


def stream_name(thing: Stream | KvBucket | ObjectBucket) -> str:
    """The JetStream stream behind a stream or bucket (nats-py's names: KV_<bucket>, OBJ_<bucket>)."""
    if isinstance(thing, KvBucket):
        return f"KV_{thing.name}"
    if isinstance(thing, ObjectBucket):
        return f"OBJ_{thing.name}"
    return thing.name


def serving(rpc: Rpc[Any, Any]) -> list[Grant]:
    return [Grant("subscribe", rpc.subject, f"serves {rpc.service}.{rpc.endpoint}")]


def calling(rpc: Rpc[Any, Any]) -> list[Grant]:
    return [Grant("publish", rpc.subject, f"calls {rpc.service}.{rpc.endpoint}")]


def micro_service(name: str) -> list[Grant]:
    """A `nats.micro` service's discovery subjects (every verb: all services, this one, this copy)."""
    why = f"its nats.micro service {name!r} answers discovery"
    needed = [
        subject
        for verb in ServiceVerb
        for subject in (control_subject(verb), control_subject(verb, name), f"{control_subject(verb, name)}.*")
    ]
    return [*(Grant("subscribe", s, why) for s in needed), Grant("subscribe", "$SRV.>", why, required=False)]


def pull_consumer(consumer: Consumer[Any]) -> list[Grant]:
    """A durable pull consumer's owner: looks it up, fetches, acks/naks/terms, parks what it gives up on."""
    stream, durable = consumer.stream.name, consumer.durable
    why = f"owns consumer {stream}/{durable}"
    return [
        Grant("publish", f"$JS.API.CONSUMER.INFO.{stream}.{durable}", why),
        Grant("publish", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}", why),
        Grant("publish", f"$JS.ACK.{stream}.{durable}.>", why),
        Grant("publish", DEAD_LETTERS.subject(stream=stream, consumer=durable), why),
    ]


def ordered_consumer(thing: Stream | KvBucket | ObjectBucket, why: str) -> list[Grant]:
    """Unnamed ordered consumers, which nats-py creates on CONSUMER.CREATE.<stream> (again after a gap), with
    flow control; it may also look the stream and its consumer up and delete the consumer when done."""
    s = stream_name(thing)
    return [
        Grant("publish", f"$JS.API.CONSUMER.CREATE.{s}", why),
        Grant("publish", f"$JS.FC.{s}.>", why),
        *(
            Grant("publish", subject, why, required=False)
            for subject in (
                f"$JS.API.CONSUMER.CREATE.{s}.>", f"$JS.API.CONSUMER.DELETE.{s}.>", f"$JS.API.CONSUMER.INFO.{s}.>",
                f"$JS.API.STREAM.INFO.{s}",
            )
        ),
    ]


def message_get(thing: Stream | KvBucket, why: str) -> list[Grant]:
    """Single-message reads: by direct get for a bucket the registry says is read so, else STREAM.MSG.GET."""
    s = stream_name(thing)
    if isinstance(thing, KvBucket) and thing.direct:
        needed = thing.direct_get("key")[0]
    else:
        needed = f"$JS.API.STREAM.MSG.GET.{s}"
    may = (
        f"$JS.API.STREAM.MSG.GET.{s}", f"$JS.API.DIRECT.GET.{s}", f"$JS.API.DIRECT.GET.{s}.>",
        f"$JS.API.STREAM.INFO.{s}",
    )
    return [Grant("publish", needed, why), *(Grant("publish", m, why, required=False) for m in may)]


def kv_writer(bucket: KvBucket) -> list[Grant]:
    """A bucket's owner puts keys (a JetStream publish to $KV.<bucket>.<key>) and may read its own entries."""
    why = f"owns bucket {bucket.name}"
    reads = [dataclasses.replace(g, required=False) for g in message_get(bucket, why)]
    return [Grant("publish", f"$KV.{bucket.name}.>", why), *reads]


def object_store(bucket: ObjectBucket, why: str) -> list[Grant]:
    """What nats-py's object store needs for any use: the stream's info and an object's meta (last message)."""
    s = stream_name(bucket)
    return [Grant("publish", f"$JS.API.STREAM.INFO.{s}", why), Grant("publish", f"$JS.API.STREAM.MSG.GET.{s}", why)]


def object_writer(bucket: ObjectBucket) -> list[Grant]:
    why = f"owns object store {bucket.name}"
    return [
        *object_store(bucket, why),
        Grant("publish", f"$O.{bucket.name}.C.>", why),
        Grant("publish", f"$O.{bucket.name}.M.>", why),
    ]


def object_reader(bucket: ObjectBucket) -> list[Grant]:
    """Reading an object: its meta, then an ordered consumer over its chunks, whose stream nats-py finds by
    subject (STREAM.NAMES)."""
    why = f"reads object store {bucket.name}"
    return [
        *object_store(bucket, why),
        Grant("publish", "$JS.API.STREAM.NAMES", why),
        *ordered_consumer(bucket, why),
    ]


def expected_grants() -> dict[str, list[Grant]]:
    """Every role's grants, from the registry's own declarations and from `USES`."""
    grants: dict[str, list[Grant]] = {role: [] for role in USES}

    def add(role: str, more: Iterable[Grant]) -> None:
        grants.setdefault(role, []).extend(more)

    for rpc in RPCS:
        add(rpc.service, serving(rpc))
    for service in sorted(ACTORS):
        add(service, micro_service(service))
    for consumer in CONSUMERS:
        add(consumer.owner, pull_consumer(consumer))
    for kv in KV_BUCKETS:
        add(kv.owner, kv_writer(kv))
    for objects in OBJECT_BUCKETS:
        add(objects.owner, object_writer(objects))
    for role, uses in USES.items():
        add(role, [g for rpc in uses.calls for g in calling(rpc)])
        add(role, [Grant("publish", subject, "publishes these events") for subject in uses.publishes])
        add(role, [g for thing in uses.follows for g in ordered_consumer(thing, f"follows {stream_name(thing)}")])
        add(role, [g for thing in uses.gets for g in message_get(thing, f"reads from {stream_name(thing)}")])
        add(role, [g for bucket in uses.reads_objects for g in object_reader(bucket)])
    for role in grants:
        if role != ADMIN:
            # each role's replies come to its own inbox prefix, so no role reads another's
            add(role, [Grant("subscribe", f"_INBOX_{role}.>", "receives its replies on its own inbox prefix")])
    return grants


# --- the comparison ---


def missing_grants(roles: dict[str, Role], expected: dict[str, list[Grant]]) -> list[str]:
    """Subjects the registry says a role needs that nats.conf does not allow it."""
    found = [f"nats.conf has no user {role!r}, which the registry names" for role in expected if role not in roles]
    for role, needs in expected.items():
        if role not in roles:
            continue
        for need in needs:
            allowed = roles[role].allowed(need.action)
            if need.required and allowed is not None and not any(covers(g, need.subject) for g in allowed):
                found.append(f"{role} may not {need.action} {need.subject}, which it needs: {need.reason}")
    return found


def unexplained_grants(roles: dict[str, Role], expected: dict[str, list[Grant]]) -> list[str]:
    """Allow patterns in nats.conf that nothing in the registry gives that role."""
    found = []
    for role in roles.values():
        for action in ACTIONS:
            permitted = [g.subject for g in expected.get(role.name, []) if g.action == action]
            universe = [g.subject for gs in expected.values() for g in gs if g.action == action]
            for grant in role.allowed(action) or ():
                if any(covers(p, grant) for p in permitted):
                    continue
                # a wildcard over registry subjects is fine when every one it reaches is this role's
                reached = [u for u in universe if intersects(grant, u)]
                if reached and all(any(covers(p, u) for p in permitted) for u in reached):
                    continue
                others = sorted({u for u in reached if not any(covers(p, u) for p in permitted)})
                shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
                found.append(
                    f"{role.name} may {action} {grant}, which nothing in the registry gives it"
                    + (f" (it reaches {shown})" if others else " (stale or misspelt)")
                )
    return found


def response_mismatches(roles: dict[str, Role]) -> list[str]:
    """Roles whose `allow_responses` disagrees with whether they answer requests (every actor's nats.micro
    service answers discovery, RPC endpoints or not)."""
    servers = set(ACTORS)
    return [
        f"{role.name} {'has' if role.allow_responses else 'lacks'} allow_responses but "
        f"{'is' if role.name in servers else 'is no'} actor"
        for role in roles.values()
        if role.publish is not None and role.allow_responses != (role.name in servers)
    ]


def disagreements(roles: dict[str, Role]) -> list[str]:
    """Every way nats.conf's permissions and the registry disagree."""
    expected = expected_grants()
    return missing_grants(roles, expected) + unexplained_grants(roles, expected) + response_mismatches(roles)


@pytest.fixture(scope="module")
def roles() -> dict[str, Role]:
    return read_roles(parse_nats_conf(NATS_CONF.read_text()))


# --- the tests ---


def test_the_reader_understands_the_nats_config_format() -> None:
    text = """
    # a comment
    server_name: bmms   // another
    max_payload = 8MB; debug false
    jetstream { limits { max: 1 } }
    authorization {
      users: [
        { user: admin, password: $PASS_ADMIN }
        { user: "svc", password: 'p w', permissions: {
            publish: ["a.b", 'c.*', "$JS.API.>"]
            subscribe: "_INBOX_svc.>"
            allow_responses: true
        } }
      ]
    }
    """
    conf = parse_nats_conf(text)
    assert conf["server_name"] == "bmms"
    assert conf["max_payload"] == "8MB"
    assert conf["debug"] is False
    assert conf["jetstream"] == {"limits": {"max": "1"}}
    assert read_roles(conf) == {
        "admin": Role(name="admin", publish=None, subscribe=None, allow_responses=False),
        "svc": Role(name="svc", publish=("a.b", "c.*", "$JS.API.>"), subscribe=("_INBOX_svc.>",), allow_responses=True),
    }
    with pytest.raises(ValueError, match="line 1"):
        parse_nats_conf("users: [ { user: x }")
    with pytest.raises(ValueError, match="include"):
        parse_nats_conf("include other.conf")


@pytest.mark.parametrize(
    ("pattern", "subject", "covered", "overlapping"),
    [
        ("a.*.c", "a.b.c", True, True),
        ("a.>", "a.b.c", True, True),
        ("a.>", "a", False, False),
        ("a.*", "a.>", False, True),
        ("a.b", "a.*", False, True),
        ("a.*.c", "a.*.d", False, False),
        (">", "a.>", True, True),
        ("a.b", "a.b.c", False, False),
    ],
)
def test_subjects_match_as_nats_matches_them(pattern: str, subject: str, covered: bool, overlapping: bool) -> None:
    assert covers(pattern, subject) is covered
    assert intersects(pattern, subject) is overlapping
    assert intersects(subject, pattern) is overlapping


def test_nats_conf_has_exactly_the_known_roles(roles: dict[str, Role]) -> None:
    assert list(roles) == list(NATS_ROLES)
    assert roles[ADMIN].publish is None, "admin (the operators' tools) is the one unrestricted user"
    named = {rpc.service for rpc in RPCS} | {c.owner for c in CONSUMERS} | set(USES)
    named |= {b.owner for b in (*KV_BUCKETS, *OBJECT_BUCKETS)}
    assert named <= set(NATS_ROLES)


def test_every_rpc_has_a_caller_and_operator_rpcs_only_operators() -> None:
    callers = {rpc.subject: {role for role, uses in USES.items() if rpc in uses.calls} for rpc in RPCS}
    operator_only = {rpc.subject for rpc in OPERATOR_RPCS}
    assert {s: c for s, c in callers.items() if not (c - {ADMIN}) and s not in operator_only} == {}
    assert {s: callers[s] for s in operator_only if callers[s] != {ADMIN}} == {}


def test_every_event_in_the_registry_has_a_publisher() -> None:
    published = [s for uses in USES.values() for s in uses.publishes]
    published += [DEAD_LETTERS.subject(stream=c.stream.name, consumer=c.durable) for c in CONSUMERS]
    kinds: tuple[BuildKind, ...] = typing.get_args(BuildKind)
    assert [k for k in kinds if build_kind_filter(k) not in published] == []
    assert [s.pattern for s in (TOOL_USAGE, SERVER_EVENTS, MEMBERSHIP_ENDED) if s.wildcard() not in published] == []
    unfed = [
        f"{c.stream.name}/{c.durable} on {f}" for c in CONSUMERS for f in c.filter_subjects
        if not any(intersects(f, p) for p in published)
    ]
    assert unfed == []


def test_nats_conf_grants_every_role_what_the_registry_says_it_needs(roles: dict[str, Role]) -> None:
    assert missing_grants(roles, expected_grants()) == []


def test_every_grant_in_nats_conf_is_explained_by_the_registry(roles: dict[str, Role]) -> None:
    assert unexplained_grants(roles, expected_grants()) == []


def test_only_roles_that_serve_rpcs_may_answer_requests(roles: dict[str, Role]) -> None:
    assert response_mismatches(roles) == []


# --- the test fails when they disagree: the real nats.conf, changed in one place ---


def _changed(action: Action, role: str, drop: str | None = None, add: str | None = None) -> Callable[
    [dict[str, Role]], dict[str, Role]
]:
    def change(roles: dict[str, Role]) -> dict[str, Role]:
        allowed = list(roles[role].allowed(action) or ())
        if drop is not None:
            assert drop in allowed, f"the mutation expects {role} to have {drop}"
            allowed.remove(drop)
        if add is not None:
            allowed.append(add)
        before = roles[role]
        after = (
            dataclasses.replace(before, publish=tuple(allowed)) if action == "publish"
            else dataclasses.replace(before, subscribe=tuple(allowed))
        )
        return {**roles, role: after}

    return change


def _answering(role: str) -> Callable[[dict[str, Role]], dict[str, Role]]:
    return lambda roles: {**roles, role: dataclasses.replace(roles[role], allow_responses=True)}


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        pytest.param(
            _changed("publish", "runner", drop="rpc.oauth.jwks"),
            "runner may not publish rpc.oauth.jwks, which it needs: calls oauth.get_jwks",
            id="a caller's grant is missing",
        ),
        pytest.param(
            _changed("subscribe", "planner", drop="rpc.builds.>"),
            "planner may not subscribe rpc.builds.submit, which it needs: serves planner.submit_build",
            id="a server's grant is missing",
        ),
        pytest.param(
            _changed("publish", "codegen", drop="$JS.ACK.BUILDS.codegen.>", add="$JS.ACK.BUILDS.codgen.>"),
            "codegen may publish $JS.ACK.BUILDS.codgen.>, which nothing in the registry gives it (stale or misspelt)",
            id="a misspelt grant",
        ),
        pytest.param(
            _changed("publish", "gateway", add="rpc.builds.cancel"),
            "gateway may publish rpc.builds.cancel, which nothing in the registry gives it (stale or misspelt)",
            id="a stale grant",
        ),
        pytest.param(
            _changed("publish", "events", add="$JS.ACK.BUILDS.planner.>"),
            "events may publish $JS.ACK.BUILDS.planner.>, which nothing in the registry gives it "
            "(it reaches $JS.ACK.BUILDS.planner.>)",
            id="another role's grant",
        ),
        pytest.param(
            _changed("publish", "gateway", add="rpc.auth.>"),
            "(it reaches rpc.auth.api_keys.create, rpc.auth.sign_in_links.issue)",
            id="a wildcard reaching an operator-only rpc",
        ),
        pytest.param(
            _changed("subscribe", "events", add="_INBOX_planner.>"),
            "events may subscribe _INBOX_planner.>",
            id="another role's inbox",
        ),
        pytest.param(_answering("events"), "events has allow_responses but is no actor", id="needless responses"),
    ],
)
def test_a_disagreement_is_reported(
    roles: dict[str, Role], change: Callable[[dict[str, Role]], dict[str, Role]], reported: str
) -> None:
    assert disagreements(roles) == []
    found = disagreements(change(roles))
    assert any(reported in line for line in found), found
