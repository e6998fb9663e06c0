"""An organisation's people and invitations at the HTTP edge: who is in it and with which role, owners
changing roles and removing people (never the last owner), pending invitations listed and withdrawn, and
nothing of another organisation reachable. People sign in by mail through a real SMTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.client import Client

from actors.runtime.bus import connect
from tests.conftest import Stack, eventually
from tests.gateway.conftest import Gateway, assert_problem, bearer, gateway_settings, new_api_key, serving
from tests.support.mailbox import Mailbox
from tests.support.sign_in import COOKIE, follow, fresh_email, me, session_of, sign_in, with_session


@pytest.fixture(scope="module")
async def http(org_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=org_gateway.base_url, timeout=15) as client:
        yield client


class Team:
    """An owner's organisation with one invited member."""

    def __init__(self, owner: str, owner_id: str, org: str, member: str, member_id: str) -> None:
        self.owner, self.owner_id, self.org = owner, owner_id, org
        self.member, self.member_id = member, member_id

    def as_owner(self) -> dict[str, str]:
        return with_session(self.owner, org=self.org)

    def as_member(self) -> dict[str, str]:
        return with_session(self.member, org=self.org)


async def invite(http: httpx.AsyncClient, owner: str, email: str) -> dict[str, str]:
    invited = await http.post("/v1/invites", json={"email": email}, headers=with_session(owner))
    assert invited.status_code == 201, invited.text
    body: dict[str, str] = invited.json()
    return body


async def accept(http: httpx.AsyncClient, mailbox: Mailbox, email: str, after: int = 0) -> str:
    """Follow the invitation mail's sign-in link; the new session's token."""
    followed = await follow(str(http.base_url), await mailbox.link_token(email, after=after))
    assert followed.status_code == 303, followed.text
    return session_of(followed)[COOKIE].value


async def team(http: httpx.AsyncClient, mailbox: Mailbox) -> Team:
    owner = await sign_in(http, mailbox, fresh_email("owner"))
    owner_me = await me(http, with_session(owner))
    member_email = fresh_email("member")
    await invite(http, owner, member_email)
    member = await accept(http, mailbox, member_email)
    member_me = await me(http, with_session(member))
    return Team(owner, str(owner_me["person_id"]), str(owner_me["org_id"]), member, str(member_me["person_id"]))


async def members(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    """person id -> role, as the organisation's member list shows it."""
    listed = await http.get("/v1/org/members", headers=headers)
    assert listed.status_code == 200, listed.text
    return {m["person_id"]: m["role"] for m in listed.json()["members"]}


async def test_members_see_their_organisations_people_and_roles_and_no_other(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await team(http, mailbox)
    b = await team(http, mailbox)
    listed = await http.get("/v1/org/members", headers=a.as_member())
    assert listed.status_code == 200, listed.text
    people = listed.json()["members"]
    assert [(m["person_id"], m["role"]) for m in people] == [(a.owner_id, "owner"), (a.member_id, "member")]
    assert all(m["email"].endswith("@example.com") and m["joined_at"].endswith("Z") for m in people)
    assert await members(http, b.as_owner()) == {b.owner_id: "owner", b.member_id: "member"}
    # B's people cannot ask about A: the organisation comes from the caller, X-Org only picks one of theirs
    assert_problem(await http.get("/v1/org/members", headers=with_session(b.owner, org=a.org)), 403)


async def test_owners_change_roles_and_the_last_owner_cannot_become_a_member(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await team(http, mailbox)
    refused = await http.patch(f"/v1/org/members/{a.owner_id}", json={"role": "member"}, headers=a.as_member())
    assert assert_problem(refused, 403)["code"] == "forbidden"
    last = await http.patch(f"/v1/org/members/{a.owner_id}", json={"role": "member"}, headers=a.as_owner())
    assert assert_problem(last, 409)["code"] == "conflict" and "last owner" in str(last.json()["detail"])

    promoted = await http.patch(f"/v1/org/members/{a.member_id}", json={"role": "owner"}, headers=a.as_owner())
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["person_id"] == a.member_id and promoted.json()["role"] == "owner"
    assert (await me(http, a.as_member()))["role"] == "owner"
    stepped_down = await http.patch(f"/v1/org/members/{a.owner_id}", json={"role": "member"}, headers=a.as_owner())
    assert stepped_down.status_code == 200, stepped_down.text
    assert await members(http, a.as_owner()) == {a.owner_id: "member", a.member_id: "owner"}
    # the first owner is a member now: owner-only actions are refused at once
    assert_problem(await http.patch(f"/v1/org/members/{a.member_id}", json={"role": "member"},
                                    headers=a.as_owner()), 403)
    assert_problem(await http.patch(f"/v1/org/members/{a.owner_id}", json={"role": "admin"},
                                    headers=a.as_member()), 400)


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await team(http, mailbox)
    promoted = await http.patch(f"/v1/org/members/{a.member_id}", json={"role": "owner"}, headers=a.as_owner())
    assert promoted.status_code == 200
    answers = await asyncio.gather(
        http.patch(f"/v1/org/members/{a.member_id}", json={"role": "member"}, headers=a.as_owner()),
        http.patch(f"/v1/org/members/{a.owner_id}", json={"role": "member"}, headers=a.as_member()),
    )
    statuses = sorted(r.status_code for r in answers)
    # whoever goes second is either no owner any more (403) or the last one (409): never zero owners
    assert statuses[0] == 200 and statuses[1] in (403, 409), [r.text for r in answers]
    roles = await members(http, with_session(a.owner, org=a.org))
    assert sorted(roles.values()) == ["member", "owner"]


async def test_removing_a_person_ends_their_sessions_in_that_organisation_only(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await team(http, mailbox)
    assert (await me(http, a.as_member()))["org_id"] == a.org  # cached by the gateway from here on
    assert_problem(await http.delete(f"/v1/org/members/{a.owner_id}", headers=a.as_member()), 403)
    last = await http.delete(f"/v1/org/members/{a.owner_id}", headers=a.as_owner())
    assert assert_problem(last, 409)["code"] == "conflict"

    removed = await http.delete(f"/v1/org/members/{a.member_id}", headers=a.as_owner())
    assert removed.status_code == 204, removed.text
    assert_problem(await http.get("/v1/me", headers=a.as_member()), 403)
    assert_problem(await http.get("/v1/org/members", headers=a.as_member()), 403)
    own = await me(http, with_session(a.member))  # their session still works in their own organisation
    assert own["org_id"] != a.org and a.org not in {o["org_id"] for o in own["orgs"]}  # type: ignore[attr-defined]
    assert await members(http, a.as_owner()) == {a.owner_id: "owner"}
    assert_problem(await http.delete(f"/v1/org/members/{a.member_id}", headers=a.as_owner()), 404)


async def test_an_owner_cannot_remove_or_demote_a_person_of_another_organisation(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await team(http, mailbox)
    b = await team(http, mailbox)
    assert_problem(await http.delete(f"/v1/org/members/{b.member_id}", headers=a.as_owner()), 404)
    assert_problem(await http.patch(f"/v1/org/members/{b.owner_id}", json={"role": "member"},
                                    headers=a.as_owner()), 404)
    assert await members(http, b.as_owner()) == {b.owner_id: "owner", b.member_id: "member"}
    assert (await me(http, b.as_member()))["org_id"] == b.org


async def test_owners_list_and_withdraw_pending_invitations_of_their_organisation_only(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await team(http, mailbox)
    b = await team(http, mailbox)
    carol, dave = fresh_email("carol"), fresh_email("dave")
    carol_invite = await invite(http, a.owner, carol)
    await invite(http, a.owner, dave)
    listed = await http.get("/v1/org/invites", headers=a.as_owner())
    assert listed.status_code == 200, listed.text
    pending = listed.json()["invites"]
    assert [i["email"] for i in pending] == [dave, carol]  # newest first; the accepted one is gone
    assert all(i["role"] == "member" and i["invited_by"] == a.owner_id for i in pending)
    assert_problem(await http.get("/v1/org/invites", headers=a.as_member()), 403)
    assert (await http.get("/v1/org/invites", headers=b.as_owner())).json() == {"invites": []}
    invite_id = carol_invite["invite_id"]
    assert_problem(await http.delete(f"/v1/org/invites/{invite_id}", headers=b.as_owner()), 404)
    assert_problem(await http.delete(f"/v1/org/invites/{invite_id}", headers=a.as_member()), 403)

    withdrawn = await http.delete(f"/v1/org/invites/{invite_id}", headers=a.as_owner())
    assert withdrawn.status_code == 204, withdrawn.text
    assert_problem(await http.delete(f"/v1/org/invites/{invite_id}", headers=a.as_owner()), 404)
    # Carol's invitation mail still signs her in, into her own organisation only.
    carol_session = await accept(http, mailbox, carol)
    assert a.org not in {o["org_id"] for o in (await me(http, with_session(carol_session)))["orgs"]}  # type: ignore[attr-defined]
    dave_session = await accept(http, mailbox, dave)
    assert (await me(http, with_session(dave_session, org=a.org)))["role"] == "member"
    assert (await http.get("/v1/org/invites", headers=a.as_owner())).json() == {"invites": []}


async def test_an_api_key_cannot_manage_people(http: httpx.AsyncClient, stack: Stack, org_gateway: Gateway) -> None:
    nc: Client = await connect(stack.settings("admin"), "test-org-apikey")
    try:
        key = await new_api_key(nc, "org-members-api-key")
    finally:
        await nc.close()
    for method, path in (("GET", "/v1/org/members"), ("GET", "/v1/org/invites"),
                         ("DELETE", "/v1/org/members/p1"), ("DELETE", "/v1/org/invites/i1")):
        assert_problem(await http.request(method, path, headers=bearer(key)), 403)


async def new_key(http: httpx.AsyncClient, headers: dict[str, str], label: str) -> dict[str, str]:
    """A key created through the API; its id and secret."""
    created = await http.post("/v1/api-keys", json={"label": label}, headers=headers)
    assert created.status_code == 201, created.text
    body: dict[str, str] = created.json()
    return body


def key_header(key: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['secret']}"}


async def test_removing_a_person_revokes_the_api_keys_they_created_there_at_once_and_on_every_gateway(
    http: httpx.AsyncClient, mailbox: Mailbox, stack: Stack
) -> None:
    a = await team(http, mailbox)
    members_key = await new_key(http, a.as_member(), "member's script")
    owners_key = await new_key(http, a.as_owner(), "owner's script")
    # a second gateway copy with the default auth cache (10 s), which does not handle the removal
    async with serving(gateway_settings(stack)) as other, httpx.AsyncClient(base_url=other.base_url) as elsewhere:
        for client in (http, elsewhere):  # both gateways now hold the key in their auth caches
            assert (await me(client, key_header(members_key)))["org_id"] == a.org

        removed = await http.delete(f"/v1/org/members/{a.member_id}", headers=a.as_owner())
        assert removed.status_code == 204, removed.text
        # at once on the gateway that handled the removal, although its cache holds the key for 300 s
        assert_problem(await http.get("/v1/me", headers=key_header(members_key)), 401)
        assert_problem(await http.put("/v1/servers/s0000000000000000/secrets/NOTES_KEY", json={"value": "x"},
                                      headers=key_header(members_key)), 401)
        # within the cache bound on the other copy
        async def refused_elsewhere() -> bool:
            return (await elsewhere.get("/v1/me", headers=key_header(members_key))).status_code == 401

        await eventually(refused_elsewhere, timeout=15, interval=0.25)
        # the owner's own key is untouched, and the revoked key is no longer listed
        assert (await me(elsewhere, key_header(owners_key)))["org_id"] == a.org
    listed = await http.get("/v1/api-keys", headers=a.as_owner())
    assert [k["key_id"] for k in listed.json()["keys"]] == [owners_key["key_id"]]


async def test_members_manage_only_their_own_api_keys_and_owners_manage_all(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await team(http, mailbox)
    owners_key = await new_key(http, a.as_owner(), "owner's")
    members_key = await new_key(http, a.as_member(), "member's")
    other_members_key = await new_key(http, a.as_member(), "member's second")

    as_member = await http.get("/v1/api-keys", headers=a.as_member())
    assert {k["key_id"] for k in as_member.json()["keys"]} == {members_key["key_id"], other_members_key["key_id"]}
    as_owner = await http.get("/v1/api-keys", headers=a.as_owner())
    assert {k["key_id"] for k in as_owner.json()["keys"]} == {
        owners_key["key_id"], members_key["key_id"], other_members_key["key_id"]}

    refused = await http.delete(f"/v1/api-keys/{owners_key['key_id']}", headers=a.as_member())
    assert assert_problem(refused, 403)["code"] == "forbidden"
    assert "only the API keys they created" in str(refused.json()["detail"])
    assert (await me(http, key_header(owners_key)))["org_id"] == a.org  # still works

    own = await http.delete(f"/v1/api-keys/{members_key['key_id']}", headers=a.as_member())
    assert own.status_code == 204, own.text
    assert_problem(await http.get("/v1/me", headers=key_header(members_key)), 401)
    by_owner = await http.delete(f"/v1/api-keys/{other_members_key['key_id']}", headers=a.as_owner())
    assert by_owner.status_code == 204, by_owner.text
    assert_problem(await http.get("/v1/me", headers=key_header(other_members_key)), 401)
