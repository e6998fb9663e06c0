"""/v1/servers at the edge: the gateway asks the deployer on the bus, always for the caller's organisation.

The deployer is another actor (not started here): a small responder on the real nats-server, connected as
the `deployer` NATS user, answers its RPC subjects with the bus_schemas types and records every request.
It keeps servers per organisation and answers `not_found` for a server of another organisation, as the
deployer does; the tests check the gateway always names the caller's organisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.runtime.bus import connect
from actors.runtime.codec import decode, encode
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import BuildAccepted, SubmitBuild
from bus_schemas.identity import ApiKeyCreated
from bus_schemas.registry import CONTROL_SERVER, GET_SERVER, GET_SERVER_LOGS, LIST_SERVERS, SUBMIT_BUILD, Rpc
from bus_schemas.servers import (
    ControlServer,
    GetServer,
    GetServerLogs,
    ListServers,
    ServerInfo,
    ServerList,
    ServerLogs,
    ServerReply,
    ServerVersion,
)
from runner_template.rpc import subscriptions_live
from tests.conftest import Stack, eventually
from tests.gateway.conftest import Gateway, assert_problem, bearer, gateway_settings, new_api_key, serving

PLAIN = {"name": "weather", "source": {"kind": "plain_words", "text": "tell me the weather in a city"}}


class DeployerDouble:
    """Answers the deployer's RPCs from an in-memory registry of servers, per organisation."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, str], ServerInfo] = {}
        self.requests: list[object] = []
        self.logs: dict[str, tuple[str, ...]] = {}
        self._nc: Client | None = None
        self._subs: list[Any] = []

    def add(self, org_id: str, server_id: str, *, versions: int = 2) -> ServerInfo:
        info = ServerInfo(
            server_id=server_id, org_id=org_id, name=f"server {server_id}",
            url=f"http://gateway.test/servers/{server_id}/mcp", state="running", version=versions,
            backend="process", isolation="process",
            versions=tuple(
                ServerVersion(version=v, build_id=f"b{v}", artifact_hash=f"{v:064x}", created_at="2026-01-01T00:00:00Z")
                for v in range(1, versions + 1)
            ),
        )
        self.servers[(org_id, server_id)] = info
        return info

    def _not_found(self, server_id: str) -> Failed:
        return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {server_id!r} in this organisation")

    def answer(self, request: object) -> object:
        self.requests.append(request)
        if isinstance(request, ListServers):
            mine = tuple(s for (org, _), s in sorted(self.servers.items()) if org == request.org_id)
            return ServerList(servers=tuple(s for s in mine if s.state != "deleted"))
        if isinstance(request, GetServer):
            found = self.servers.get((request.org_id, request.server_id))
            return ServerReply(server=found) if found else self._not_found(request.server_id)
        if isinstance(request, GetServerLogs):
            if (request.org_id, request.server_id) not in self.servers:
                return self._not_found(request.server_id)
            lines = self.logs.get(request.server_id, ())
            return ServerLogs(server_id=request.server_id, lines=lines[-request.tail:])
        if isinstance(request, ControlServer):
            key = (request.org_id, request.server_id)
            found = self.servers.get(key)
            if found is None:
                return self._not_found(request.server_id)
            if request.action == "rollback":
                if request.version not in {v.version for v in found.versions}:
                    return Failed(code=FailureCode.INVALID, detail=f"no version {request.version}", field="version")
                changed = found.__replace__(version=request.version, state="running")
            else:
                state = {"stop": "stopped", "start": "running", "delete": "deleted"}[request.action]
                changed = found.__replace__(state=state)
            self.servers[key] = changed
            return ServerReply(server=changed)
        raise AssertionError(f"unexpected request {request!r}")

    async def serve(self, nc: Client) -> None:
        self._nc = nc
        self._subs = [
            await nc.subscribe(rpc.subject, queue=rpc.service, cb=self._handler(rpc))
            for rpc in (LIST_SERVERS, GET_SERVER, CONTROL_SERVER, GET_SERVER_LOGS)
        ]
        await subscriptions_live(nc)

    @contextlib.asynccontextmanager
    async def offline(self) -> AsyncIterator[None]:
        """No deployer answers inside the block."""
        assert self._nc is not None
        nc = self._nc
        for sub in self._subs:
            await sub.unsubscribe()
        await subscriptions_live(nc)
        try:
            yield
        finally:
            await self.serve(nc)

    def _handler(self, rpc: Rpc[Any, Any]) -> Any:
        async def handle(msg: Msg) -> None:
            await msg.respond(encode(self.answer(decode(rpc.request, msg.data))))

        return handle


class BuildRegistryDouble:
    """Answers SUBMIT_BUILD, recording what the gateway asked for."""

    def __init__(self) -> None:
        self.requests: list[SubmitBuild] = []

    async def serve(self, nc: Client) -> None:
        async def handle(msg: Msg) -> None:
            request: SubmitBuild = decode(SUBMIT_BUILD.request, msg.data)
            self.requests.append(request)
            await msg.respond(encode(BuildAccepted(build_id=f"b{len(self.requests)}", org_id=request.org_id,
                                                   status="requested")))

        await nc.subscribe(SUBMIT_BUILD.subject, queue=SUBMIT_BUILD.service, cb=handle)
        await subscriptions_live(nc)


@pytest.fixture(scope="module")
async def deployer(stack: Stack) -> AsyncIterator[DeployerDouble]:
    nc = await connect(stack.settings("deployer"), "test-deployer-double")
    double = DeployerDouble()
    await double.serve(nc)
    yield double
    await nc.close()


@pytest.fixture(scope="module")
async def build_registry(stack: Stack) -> AsyncIterator[BuildRegistryDouble]:
    nc = await connect(stack.settings("planner"), "test-build-registry-double")
    double = BuildRegistryDouble()
    await double.serve(nc)
    yield double
    await nc.close()


@pytest.fixture(scope="module")
async def edge(stack: Stack, auth_actor: None) -> AsyncIterator[Gateway]:
    async with serving(gateway_settings(stack)) as gw:
        yield gw


@pytest.fixture(scope="module")
async def client(edge: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=15) as http:
        yield http


@pytest.fixture(scope="module")
async def org_a(module_admin: Client, auth_actor: None) -> ApiKeyCreated:
    return await new_api_key(module_admin, "servers-api-org-a")


@pytest.fixture(scope="module")
async def org_b(module_admin: Client, auth_actor: None) -> ApiKeyCreated:
    return await new_api_key(module_admin, "servers-api-org-b")


def last_request(deployer: DeployerDouble) -> Any:
    return deployer.requests[-1]


async def test_list_and_read_show_only_the_callers_servers(
    client: httpx.AsyncClient, deployer: DeployerDouble, org_a: ApiKeyCreated, org_b: ApiKeyCreated
) -> None:
    mine = deployer.add(org_a.org_id, "srv-a-list")
    deployer.add(org_b.org_id, "srv-b-list")

    listed = await client.get("/v1/servers", headers=bearer(org_a))
    assert listed.status_code == 200, listed.text
    ids = [s["server_id"] for s in listed.json()["servers"]]
    assert "srv-a-list" in ids and "srv-b-list" not in ids
    assert last_request(deployer) == ListServers(org_id=org_a.org_id)

    read = await client.get("/v1/servers/srv-a-list", headers=bearer(org_a))
    assert read.status_code == 200, read.text
    body = read.json()
    assert "type" not in body  # the bus envelope stays on the bus
    assert body["url"] == mine.url and body["version"] == 2 and [v["version"] for v in body["versions"]] == [1, 2]


async def test_another_organisations_server_is_404_for_every_operation(
    client: httpx.AsyncClient, deployer: DeployerDouble, org_a: ApiKeyCreated, org_b: ApiKeyCreated
) -> None:
    deployer.add(org_b.org_id, "srv-b-foreign")
    attempts = [
        client.get("/v1/servers/srv-b-foreign", headers=bearer(org_a)),
        client.post("/v1/servers/srv-b-foreign/stop", headers=bearer(org_a)),
        client.post("/v1/servers/srv-b-foreign/start", headers=bearer(org_a)),
        client.post("/v1/servers/srv-b-foreign/rollback", json={"version": 1}, headers=bearer(org_a)),
        client.delete("/v1/servers/srv-b-foreign", headers=bearer(org_a)),
        client.get("/v1/servers/srv-b-foreign/logs", headers=bearer(org_a)),
    ]
    before = len(deployer.requests)
    for attempt in attempts:
        body = assert_problem(await attempt, 404)
        assert body["code"] == "not_found" and body["type"] == "/problems/not_found"
        assert "srv-b-foreign" in str(body["detail"])
    asked = deployer.requests[before:]
    assert len(asked) == len(attempts)
    assert all(getattr(r, "org_id", None) == org_a.org_id for r in asked)
    assert deployer.servers[(org_b.org_id, "srv-b-foreign")].state == "running"  # nothing was stopped


async def test_the_request_cannot_choose_the_organisation(
    client: httpx.AsyncClient, deployer: DeployerDouble, org_a: ApiKeyCreated, org_b: ApiKeyCreated
) -> None:
    deployer.add(org_b.org_id, "srv-b-choose")
    before = len(deployer.requests)
    # An org_id in the body is refused, not used.
    body = assert_problem(await client.post(
        "/v1/servers/srv-b-choose/rollback", json={"version": 1, "org_id": org_b.org_id}, headers=bearer(org_a),
    ), 400)
    assert body["code"] == "invalid"
    # Nor in the query string: ignored, the caller's organisation is asked.
    await client.get("/v1/servers", params={"org_id": org_b.org_id}, headers=bearer(org_a))
    assert last_request(deployer) == ListServers(org_id=org_a.org_id)
    # X-Org naming an organisation the caller does not belong to is forbidden, before the deployer is asked.
    refused = await client.post("/v1/servers/srv-b-choose/stop", headers={**bearer(org_a), "X-Org": org_b.org_id})
    assert assert_problem(refused, 403)["code"] == "forbidden"
    assert [r for r in deployer.requests[before:] if not isinstance(r, ListServers)] == []
    assert deployer.servers[(org_b.org_id, "srv-b-choose")].state == "running"


async def test_stop_start_rollback_delete_reach_the_deployer_as_the_caller(
    client: httpx.AsyncClient, deployer: DeployerDouble, org_a: ApiKeyCreated
) -> None:
    deployer.add(org_a.org_id, "srv-a-life", versions=3)
    headers = bearer(org_a)

    stopped = await client.post("/v1/servers/srv-a-life/stop", headers=headers)
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] == "stopped"
    assert last_request(deployer) == ControlServer(
        org_id=org_a.org_id, server_id="srv-a-life", action="stop", requested_by=f"api_key:{org_a.key_id}",
    )

    started = await client.post("/v1/servers/srv-a-life/start", headers=headers)
    assert started.json()["state"] == "running"

    rolled = await client.post("/v1/servers/srv-a-life/rollback", json={"version": 1}, headers=headers)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 1
    assert last_request(deployer).action == "rollback" and last_request(deployer).version == 1

    deleted = await client.delete("/v1/servers/srv-a-life", headers=headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["state"] == "deleted"
    listed = await client.get("/v1/servers", headers=headers)
    assert "srv-a-life" not in [s["server_id"] for s in listed.json()["servers"]]


async def test_rollback_needs_a_json_version(
    client: httpx.AsyncClient, deployer: DeployerDouble, org_a: ApiKeyCreated
) -> None:
    deployer.add(org_a.org_id, "srv-a-roll")
    headers = bearer(org_a)
    missing = assert_problem(await client.post("/v1/servers/srv-a-roll/rollback", json={}, headers=headers), 400)
    assert missing["code"] == "invalid"
    zero = assert_problem(await client.post("/v1/servers/srv-a-roll/rollback", json={"version": 0},
                                            headers=headers), 400)
    assert any(e["field"] == "version" for e in zero["errors"])  # type: ignore[union-attr]
    form = await client.post("/v1/servers/srv-a-roll/rollback", content=b"version=1",
                             headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert_problem(form, 415)
    # A well-formed rollback the deployer refuses: its `invalid` is the one mapping's 422, naming the field.
    unknown = assert_problem(await client.post("/v1/servers/srv-a-roll/rollback", json={"version": 9},
                                               headers=headers), 422)
    assert unknown["code"] == "invalid" and unknown["errors"] == [
        {"field": "version", "source": "body", "message": "no version 9"}
    ]


async def test_logs_pass_the_tail_and_return_lines(
    client: httpx.AsyncClient, deployer: DeployerDouble, org_a: ApiKeyCreated
) -> None:
    deployer.add(org_a.org_id, "srv-a-logs")
    deployer.logs["srv-a-logs"] = tuple(f"line {i}" for i in range(10))
    read = await client.get("/v1/servers/srv-a-logs/logs", params={"tail": 3}, headers=bearer(org_a))
    assert read.status_code == 200, read.text
    assert read.json() == {"server_id": "srv-a-logs", "lines": ["line 7", "line 8", "line 9"]}
    assert last_request(deployer) == GetServerLogs(org_id=org_a.org_id, server_id="srv-a-logs", tail=3)
    for bad in ("0", "5001", "many"):
        body = assert_problem(await client.get("/v1/servers/srv-a-logs/logs", params={"tail": bad},
                                               headers=bearer(org_a)), 400)
        assert body["errors"][0]["source"] == "query"  # type: ignore[index]


async def test_servers_need_a_credential(client: httpx.AsyncClient, deployer: DeployerDouble) -> None:
    before = len(deployer.requests)
    for response in (
        await client.get("/v1/servers"),
        await client.post("/v1/servers/x/stop"),
        await client.get("/v1/servers/x/logs", headers={"Authorization": "Bearer bmms_0000000000000000_nope"}),
    ):
        body = assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer") and body["code"] == "unauthenticated"
    assert len(deployer.requests) == before


async def test_a_server_id_that_cannot_exist_is_404_without_asking(
    client: httpx.AsyncClient, deployer: DeployerDouble, org_a: ApiKeyCreated
) -> None:
    before = len(deployer.requests)
    body = assert_problem(await client.get("/v1/servers/a.b*", headers=bearer(org_a)), 404)
    assert body["code"] == "not_found"
    assert len(deployer.requests) == before


async def test_no_deployer_running_is_503(
    client: httpx.AsyncClient, deployer: DeployerDouble, org_a: ApiKeyCreated
) -> None:
    async with deployer.offline():
        body = assert_problem(await client.get("/v1/servers", headers=bearer(org_a)), 503)
    assert body["code"] == "unavailable" and "deployer" in str(body["detail"])

    async def answered() -> bool:
        # Once a deployer subscribes again it answers; a stop-time CI run once saw one more 503 here
        # (detail not captured then), so the body is kept for the failure message.
        after = await client.get("/v1/servers", headers=bearer(org_a))
        assert after.status_code in (200, 503), after.text
        return after.status_code == 200

    await eventually(answered, timeout=10)


async def test_build_submission_passes_the_target_server(
    client: httpx.AsyncClient, build_registry: BuildRegistryDouble, deployer: DeployerDouble, org_a: ApiKeyCreated
) -> None:
    deployer.add(org_a.org_id, "srv-a-redeploy")
    redeploy = {**PLAIN, "server_id": "srv-a-redeploy"}
    accepted = await client.post("/v1/builds", json=redeploy, headers=bearer(org_a))
    assert accepted.status_code == 202, accepted.text
    request = build_registry.requests[-1]
    assert request.server_id == "srv-a-redeploy" and request.org_id == org_a.org_id

    fresh = await client.post("/v1/builds", json=PLAIN, headers=bearer(org_a))
    assert fresh.status_code == 202
    assert build_registry.requests[-1].server_id is None

    count = len(build_registry.requests)
    bad = assert_problem(await client.post("/v1/builds", json={**PLAIN, "server_id": "no.dots"},
                                           headers=bearer(org_a)), 400)
    assert bad["errors"][0]["field"] == "server_id"  # type: ignore[index]
    assert len(build_registry.requests) == count


async def test_a_build_for_another_organisations_server_is_404_at_once_and_never_submitted(
    client: httpx.AsyncClient, build_registry: BuildRegistryDouble, deployer: DeployerDouble,
    org_a: ApiKeyCreated, org_b: ApiKeyCreated,
) -> None:
    deployer.add(org_b.org_id, "srv-b-target")
    count = len(build_registry.requests)
    for server_id in ("srv-b-target", "srv-nowhere"):  # another organisation's, and none at all: one answer
        refused = assert_problem(await client.post("/v1/builds", json={**PLAIN, "server_id": server_id},
                                                   headers=bearer(org_a)), 404)
        assert refused["code"] == "not_found" and server_id in str(refused["detail"])
    assert len(build_registry.requests) == count  # no plan, generate or check was spent on it
