"""The oauth role in nats.conf: it answers its own RPCs, consumes ended memberships (which only auth publishes)
and nothing else; the gateway reaches only the public OAuth endpoints (pre-registering clients stays an
operator action)."""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.test_nats_conf import _violations


@pytest.mark.parametrize(
    ("role", "action", "subject"),
    [
        ("oauth", "publish", "builds.o1.b1.requested"),
        ("oauth", "publish", "rpc.auth.authenticate"),
        ("oauth", "subscribe", "rpc.auth.>"),
        ("oauth", "subscribe", "_INBOX_gateway.>"),
        ("gateway", "publish", "rpc.oauth.clients.create"),
        ("gateway", "subscribe", "rpc.oauth.>"),
        # ended memberships: only auth says a person left; the oauth actor reads only its own consumer
        ("oauth", "publish", "identity.o1.membership_ended"),
        ("gateway", "publish", "identity.o1.membership_ended"),
        ("runner", "publish", "identity.o1.membership_ended"),
        ("auth", "publish", "identity.o1.something_else"),
        ("oauth", "publish", "$JS.API.CONSUMER.INFO.IDENTITY.someone"),
        ("oauth", "publish", "$JS.ACK.BUILDS.planner.x"),
        ("oauth", "publish", "deadletter.BUILDS.planner"),
        ("metering", "publish", "$JS.API.CONSUMER.INFO.IDENTITY.oauth"),
    ],
)
async def test_oauth_roles_are_refused_what_they_do_not_need(
    stack: Stack, role: str, action: str, subject: str
) -> None:
    assert await _violations(stack, role, action, subject), f"{role} was allowed to {action} {subject}"


@pytest.mark.parametrize(
    ("role", "action", "subject"),
    [
        ("oauth", "subscribe", "rpc.oauth.token"),
        ("gateway", "publish", "rpc.oauth.token"),
        ("gateway", "publish", "rpc.oauth.authorize.start"),
        ("gateway", "publish", "rpc.oauth.clients.register"),
        ("admin", "publish", "rpc.oauth.clients.create"),
        ("auth", "publish", "identity.o1.membership_ended"),
        ("oauth", "publish", "$JS.API.CONSUMER.INFO.IDENTITY.oauth"),
        ("oauth", "publish", "$JS.ACK.IDENTITY.oauth.x"),
        ("oauth", "publish", "deadletter.IDENTITY.oauth"),
    ],
)
async def test_oauth_roles_are_allowed_what_they_need(stack: Stack, role: str, action: str, subject: str) -> None:
    assert await _violations(stack, role, action, subject) == []
