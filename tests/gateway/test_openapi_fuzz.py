"""Schemathesis over the gateway's own OpenAPI document, against a real stack: every operation, with an API key
and with a session cookie, examples, boundary values and random (valid and invalid) inputs, bounded in time.

The rules checked on every answer:
- never a 5xx;
- an error (4xx) outside `/oauth/` and `/.well-known/` is an RFC 9457 problem document
  (`application/problem+json`); the OAuth endpoints keep RFC 6749 JSON errors, and the magic-link callback is a
  page for a person, whose refusals are HTML pages.

The stack is the one the other gateway tests use (real nats-server and PostgreSQL, the actors in this event
loop, the gateway on a free port), with every actor behind an HTTP route running: auth (mail to a local SMTP
server, for the session), oauth, planner, deployer (local processes; no build gets that far) and metering. The
organisation owns one stopped server with two versions, so the server routes get past "not found".

Schemathesis's engine (the one `schemathesis run` drives) runs in a worker thread with blocking HTTP, so this
event loop keeps serving the gateway meanwhile. Its generated values are mixed with a few known troublemakers
(integers past 32 and 64 bits, months at the ends of the calendar, strings outside Latin-1). What it cannot
send - JSON nested thousands deep, bodies that are not UTF-8 - a second test sends to every operation that takes
a JSON body. Every failing answer is collected by the check itself, one per (operation, rule, status), and all
are reported together, each with a curl line that reproduces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from nats.aio.client import Client
from schemathesis.engine import events, from_schema

from actors.catalog import create_actor
from actors.codegen.artifacts import build_artifact, store_artifact
from actors.deployer import storage
from actors.deployer.actor import create_actor as create_deployer
from actors.deployer.backends.process import ProcessBackend
from actors.runtime.bus import connect
from bus_schemas.registry import ARTIFACTS
from gateway.config import GatewayConfig
from tests.conftest import Stack, running
from tests.gateway.conftest import gateway_settings, new_api_key, serving
from tests.support.codegen_samples import SECRET_NAME, plan_hash, sample_plan
from tests.support.mailbox import Mailbox
from tests.support.oauth_helpers import SECRET_KEY
from tests.support.sign_in import me, sign_in

OAUTH_PREFIXES = ("/oauth/", "/.well-known/")
"""Where errors are RFC 6749 JSON, not problem documents."""
PAGES = ("/v1/auth/magic-link/callback",)
"""Operations that answer a person's browser with HTML pages, refusals included."""
PROBLEM_JSON = "application/problem+json"

API_KEY_SECONDS = 50
"""Schemathesis's time limit for the run with an API key: every operation, every phase."""
SESSION_SECONDS = 20
"""Its time limit for the run with a session cookie: the /v1 operations, examples and random inputs only (the
inputs are checked the same way whatever the credential; what differs is the cookie's own path)."""
MAX_EXAMPLES = 25
"""Random examples per operation (the coverage phase adds its boundary and invalid values)."""
REQUEST_TIMEOUT = 10.0
"""Seconds one request may take; also how long an event stream is read at most."""
TROUBLEMAKERS: dict[str, list[str | int]] = {
    "integers": [-1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63, 2**64, 10**30],
    "months": ["0000-01", "0001-01", "9999-12", "2026-00", "2026-13"],
    "strings": ["ключ", "\u2603", "\u202e", "a" * 5000, "../../etc/passwd", "%00", "' OR 1=1 --"],
}
"""Values schemathesis mixes into what it generates (its dictionaries)."""


@dataclass(frozen=True)
class Finding:
    """One answer that broke a rule."""

    credential: str
    operation: str
    rule: str
    status: int
    content_type: str
    body: str
    reproduce: str


@dataclass
class Findings:
    """The answers that broke a rule, one per (credential, operation, rule, status): the shortest reproduction
    seen."""

    by_key: dict[tuple[str, str, str, int], Finding] = field(default_factory=dict)
    credential: str = ""
    """Which credential the current run sends (set before each run)."""
    answers: int = 0

    def add(self, finding: Finding) -> None:
        key = (finding.credential, finding.operation, finding.rule, finding.status)
        known = self.by_key.get(key)
        if known is None or len(finding.reproduce) < len(known.reproduce):
            self.by_key[key] = finding

    def report(self) -> str:
        lines = [f"{len(self.by_key)} distinct answer(s) broke the gateway's HTTP error rules:"]
        for finding in sorted(self.by_key.values(), key=lambda f: (f.operation, f.rule, f.status, f.credential)):
            lines += [
                f"- {finding.operation} [{finding.credential}]: {finding.rule}: {finding.status} "
                f"{finding.content_type or '(no content type)'}",
                f"  body: {finding.body}",
                f"  reproduce: {finding.reproduce}",
            ]
        return "\n".join(lines)


FINDINGS = Findings()
"""Filled by `gateway_error_rules` during a run (schemathesis checks are registered globally)."""


def broken_rule(path: str, status: int, content_type: str) -> str | None:
    """Which rule an answer to `path` with `status` and `content_type` breaks, if any."""
    if status >= 500:
        return "server error"
    if status < 400 or path.startswith(OAUTH_PREFIXES):
        return None
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == PROBLEM_JSON or (path in PAGES and media_type == "text/html"):
        return None
    return "error is not application/problem+json"


def shown(content: bytes) -> str:
    """The start of a response body, for a report."""
    return content[:300].decode("utf-8", "replace")


@schemathesis.check
def gateway_error_rules(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                        case: schemathesis.Case[Any]) -> bool | None:
    """No 5xx; outside the OAuth endpoints, every error is a problem document."""
    FINDINGS.answers += 1
    headers = {name.lower(): values for name, values in response.headers.items()}
    content_type = ",".join(headers.get("content-type", []))
    rule = broken_rule(case.operation.path, response.status_code, content_type)
    if rule is None:
        return None
    try:
        curl = case.as_curl_command()
    except Exception as exc:  # a request curl cannot spell is still worth reporting
        curl = f"(no curl: {exc!r}) {case!r}"
    FINDINGS.add(Finding(credential=FINDINGS.credential, operation=case.operation.label, rule=rule,
                         status=response.status_code, content_type=content_type, body=shown(response.content),
                         reproduce=curl[:2000]))
    raise AssertionError(f"{rule}: {response.status_code} {content_type}: {shown(response.content)}")


def schemathesis_config(base_url: str, headers: dict[str, str], seconds: int, servers: SeededServers, *,
                        max_examples: int = MAX_EXAMPLES, coverage: bool = True,
                        skipped_paths: str | None = None) -> schemathesis.Config:
    """The phases that send single requests (examples, coverage unless not `coverage`, fuzzing) to every
    operation but those whose path matches `skipped_paths`: valid and invalid data with the troublemakers mixed
    in, mostly the seeded servers' ids and the secret name their artifact reads; our check only, bounded by
    `seconds` in total; nothing written to disk."""
    # Operation filters live in the config: schemathesis ignores `schema.include()` once `operations` has entries.
    skipped = [{"include-path-regex": skipped_paths, "enabled": False}] if skipped_paths else []
    return schemathesis.Config.from_dict({
        # One seed for CI, so a red run is the same run when repeated; BMMS_FUZZ_SEED explores others locally.
        "seed": int(os.environ.get("BMMS_FUZZ_SEED", "20261207")),
        "base-url": base_url,
        "headers": headers,
        "max-time": seconds,
        "request-timeout": REQUEST_TIMEOUT,
        "max-stream-events": 1,  # GET /v1/events never ends by itself; its first message says enough
        "continue-on-failure": True,
        "workers": 1,
        "cache": {"enabled": False},
        "dictionaries": {
            **{name: {"values": values} for name, values in TROUBLEMAKERS.items()},
            "kept-server": {"values": [servers.kept]},
            "secret-names": {"values": [SECRET_NAME]},
            "doomed-server": {"values": [servers.doomed]},
        },
        # Type-wide dictionaries miss values under `oneOf` (an optional query parameter) and in bodies: name them.
        "parameters": {
            "query.period": {"dictionary": "months", "probability": 0.5},
            **{key: {"dictionary": "integers", "probability": 0.3} for key in ("query.after", "query.tail",
                                                                              "body.version")},
        },
        # Deleting is for the other server, so the kept one stays for every other route.
        "operations": [
            {"include-path-regex": r"^/v1/servers/\{server_id\}", "exclude-name": "DELETE /v1/servers/{server_id}",
             "parameters": {"path.server_id": {"dictionary": "kept-server", "probability": 0.7}}},
            {"include-name": "DELETE /v1/servers/{server_id}",
             "parameters": {"path.server_id": {"dictionary": "doomed-server", "probability": 0.7}},
             # nor ids seen in other answers (GET /v1/servers names the kept one)
             "phases": {phase: {"extra-data-sources": {"responses": False}} for phase in ("coverage", "fuzzing")}},
            {"include-path-regex": r"/secrets/\{name\}$",
             "parameters": {"path.name": {"dictionary": "secret-names", "probability": 0.5}}},
            *skipped,
        ],
        "generation": {
            "mode": "all", "max-examples": max_examples, "database": "none",
            "dictionaries": {"integer": {"dictionary": "integers", "probability": 0.3},
                             "string": {"dictionary": "strings", "probability": 0.1}},
        },
        "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": False}},
        "checks": {"enabled": False, "gateway_error_rules": {"enabled": True}},
    })


@dataclass
class RunOutcome:
    """What one schemathesis run did besides the check's findings."""

    scenarios: dict[str, int] = field(default_factory=dict)
    """Scenarios finished, by phase."""
    errors: list[str] = field(default_factory=list)
    stop_reason: str = ""

    def __str__(self) -> str:
        by_phase = ", ".join(f"{phase} {count}" for phase, count in self.scenarios.items())
        return f"scenarios: {by_phase or 'none'}; stopped: {self.stop_reason}"


def run_schemathesis(document: dict[str, Any], config: schemathesis.Config) -> RunOutcome:
    """One schemathesis run over `document` (blocking: call it in a worker thread)."""
    schema = schemathesis.openapi.from_dict(document, config=config)
    outcome = RunOutcome()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            outcome.scenarios[event.phase.value] = outcome.scenarios.get(event.phase.value, 0) + 1
        elif isinstance(event, events.NonFatalError):
            outcome.errors.append(f"{event.label}: {event.info.title}: {event.info.message}"[:1000])
        elif isinstance(event, events.FatalError):
            outcome.errors.append(f"fatal: {event.exception!r}"[:1000])
        elif isinstance(event, events.EngineFinished):
            outcome.stop_reason = str(event.stop_reason)
    return outcome


@dataclass(frozen=True)
class SeededServers:
    """The organisation's servers: one for every route, one to delete."""

    kept: str
    doomed: str


@dataclass(frozen=True)
class FuzzTarget:
    """A gateway on a real stack, the two credentials of one organisation's owner, and that organisation's
    servers."""

    base_url: str
    api_key: dict[str, str]
    session: dict[str, str]
    servers: SeededServers


async def seed_server(stack: Stack, org_id: str) -> str:
    """A stopped server of `org_id` with two versions of the sample artifact, as the deployer records one after
    two builds (no build runs for it)."""
    plan = sample_plan()
    nc = await connect(stack.settings("codegen"), "test-openapi-fuzz-seed")
    try:
        artifact_hash = await store_artifact(await nc.jetstream().object_store(ARTIFACTS.name),
                                             build_artifact(plan, plan_hash(plan)))
    finally:
        await nc.close()
    server_id = f"s{secrets.token_hex(6)}"
    conn = await asyncpg.connect(stack.database_url)
    try:
        await storage.create_server(conn, server_id=server_id, org_id=org_id, name="fuzzed",
                                    url=f"https://bmms.test/servers/{server_id}/mcp", backend="process")
        for n in (1, 2):
            await storage.add_version(conn, server_id=server_id, build_id=f"b{server_id}{n}",
                                      artifact_hash=artifact_hash, tools=tuple(t.name for t in plan.tools))
        await storage.set_state(conn, server_id, state="stopped", desired="stopped", version=2)
    finally:
        await conn.close()
    return server_id


@pytest.fixture(scope="module")
async def target(stack: Stack, mailbox: Mailbox, module_admin: Client) -> AsyncIterator[FuzzTarget]:
    backend = ProcessBackend(stack.root / f"fuzz-runners-{secrets.token_hex(4)}")
    deployer_settings = stack.settings("deployer", public_url="https://bmms.test", secret_key=SECRET_KEY,
                                       runner_nats_password=stack.nats.passwords["runner"])
    async with contextlib.AsyncExitStack() as actors:
        await actors.enter_async_context(running(create_actor("auth"), stack.settings("auth", smtp_url=mailbox.url)))
        await actors.enter_async_context(running(create_actor("oauth"), stack.settings("oauth", secret_key=SECRET_KEY)))
        for name in ("planner", "metering"):
            await actors.enter_async_context(running(create_actor(name), stack.settings(name)))
        await actors.enter_async_context(running(create_deployer(backend), deployer_settings))
        gateway = await actors.enter_async_context(serving(gateway_settings(stack), GatewayConfig()))
        email = f"fuzz-{secrets.token_hex(4)}@example.com"
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as http:
            session = {"Cookie": f"bmms_session={await sign_in(http, mailbox, email)}"}
            org_id = str((await me(http, session))["org_id"])
        key = await new_api_key(module_admin, email)  # for the organisation sign-in made (named after the person)
        assert key.org_id == org_id
        try:
            yield FuzzTarget(base_url=gateway.base_url, api_key={"Authorization": f"Bearer {key.secret}"},
                             session=session,
                             servers=SeededServers(kept=await seed_server(stack, org_id),
                                                   doomed=await seed_server(stack, org_id)))
        finally:
            await stack.forget_servers()
            for runner in await backend.running():
                await backend.remove(runner.server_id, ())


@pytest.fixture(scope="module")
async def document(target: FuzzTarget) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=target.base_url, timeout=15) as http:
        answer = await http.get("/schema/openapi.json")
    assert answer.status_code == 200, answer.text
    loaded: dict[str, Any] = answer.json()
    assert len(loaded["paths"]) > 20
    return loaded


async def test_every_operation_answers_without_5xx_and_errors_as_problem_details(
    target: FuzzTarget, document: dict[str, Any]
) -> None:
    started = time.monotonic()
    FINDINGS.by_key.clear()
    FINDINGS.answers = 0
    FINDINGS.credential = "api key"
    with_key = await asyncio.to_thread(
        run_schemathesis, document,
        schemathesis_config(target.base_url, target.api_key, API_KEY_SECONDS, target.servers))
    FINDINGS.credential = "session"
    # The /v1 routes, sign-out excepted (it would end the session the rest of the run uses).
    with_session = await asyncio.to_thread(
        run_schemathesis, document,
        schemathesis_config(target.base_url, target.session, SESSION_SECONDS, target.servers,
                            max_examples=MAX_EXAMPLES // 2, coverage=False,
                            skipped_paths=r"^/(?!v1/)|^/v1/auth/sign-out$"))
    summary = (f"{FINDINGS.answers} answers checked in {time.monotonic() - started:.0f} s; "
               f"api key: {with_key}; session: {with_session}")
    print(summary)  # shown with -s: how much the run covered
    assert with_key.scenarios and with_session.scenarios, summary
    assert not FINDINGS.by_key, FINDINGS.report() + "\n" + summary
    assert not with_key.errors + with_session.errors, "\n".join(with_key.errors + with_session.errors)


HOSTILE_BODIES: dict[str, bytes] = {
    "nested 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    "object nested 10000 deep": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "not UTF-8": b'{"name": "\xff\xfe\xc3\x28"}',
    "lone surrogate escape": b'{"name": "\\ud800"}',
    "a bare number past 64 bits": b"18446744073709551616",
    "an empty body": b"",
}
"""JSON bodies schemathesis does not send (it serialises what it generates)."""


UNDECLARED_JSON_BODIES = [("POST", "/oauth/register", "/oauth/register")]
"""Operations that read a JSON body the OpenAPI document does not declare (RFC 7591 registration)."""


def json_body_operations(document: dict[str, Any], server_id: str) -> list[tuple[str, str, str]]:
    """(method, concrete path, path template) of every operation whose request body is JSON."""
    found = list(UNDECLARED_JSON_BODIES)
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {}) if isinstance(operation, dict) else {}
            if "application/json" in content:
                path = template.replace("{server_id}", server_id)
                for name in ("name", "person_id", "key_id", "invite_id", "session_id", "build_id"):
                    path = path.replace(f"{{{name}}}", "x1")
                found.append((method.upper(), path, template))
    return found


async def test_every_json_body_operation_refuses_unparsable_bodies_with_a_problem(
    target: FuzzTarget, document: dict[str, Any]
) -> None:
    operations = json_body_operations(document, target.servers.kept)
    assert any(template == "/v1/builds" for _, _, template in operations), operations
    failures = Findings()
    async with httpx.AsyncClient(base_url=target.base_url, timeout=REQUEST_TIMEOUT) as http:
        for credential, headers in (("api key", target.api_key), ("session", target.session)):
            for method, path, template in operations:
                for what, body in HOSTILE_BODIES.items():
                    answer = await http.request(method, path, content=body,
                                                headers={**headers, "Content-Type": "application/json"})
                    content_type = answer.headers.get("content-type", "")
                    rule = broken_rule(template, answer.status_code, content_type)
                    if rule is not None:
                        failures.add(Finding(
                            credential=credential, operation=f"{method} {template}", rule=f"{what}: {rule}",
                            status=answer.status_code, content_type=content_type, body=shown(answer.content),
                            reproduce=f"{method} {path} with {what} ({len(body)} bytes)"))
    assert not failures.by_key, failures.report()
