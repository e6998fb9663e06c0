"""`bmms oauth-client create` pre-registers a client through the oauth actor, as a real process."""

from __future__ import annotations

import json
import uuid

from actors.oauth.actor import create_actor as create_oauth_actor
from actors.oauth.state import OAuthConfig
from tests.conftest import Stack, running
from tests.ops.test_operator_commands import bmms_async, operator_env
from tests.support.oauth_helpers import SECRET_KEY


async def test_oauth_client_create_prints_the_client_and_its_secret_once(stack: Stack) -> None:
    settings = stack.settings("oauth", secret_key=SECRET_KEY)
    async with running(create_oauth_actor(OAuthConfig()), settings):
        client_id = f"ide-{uuid.uuid4().hex[:6]}"
        env = operator_env(stack, "admin")
        returncode, stdout, stderr = await bmms_async(
            "oauth-client", "create", "--name", "My IDE", "--redirect-uri", "https://ide.example/cb",
            "--client-id", client_id, "--confidential", env=env,
        )
        assert returncode == 0, stderr
        created = json.loads(stdout)
        assert created["client_id"] == client_id and created["client_secret"].startswith("bmms_cs_")
        assert created["token_endpoint_auth_method"] == "client_secret_basic"
        returncode, _, stderr = await bmms_async(
            "oauth-client", "create", "--name", "Again", "--redirect-uri", "https://ide.example/cb",
            "--client-id", client_id, env=env,
        )
        assert returncode == 1 and "already exists" in stderr
