"""Runner settings travel as `BMMS_RUNNER_*` variables: what the deployer writes is what the runner reads,
and a bad variable is named when the runner (or any platform process) starts."""

from __future__ import annotations

import msgspec
import pytest

from actors.deployer.backends.base import RunnerSpec
from actors.runtime.settings import load_settings
from runner_template.app import RunnerSettings

ISSUER = "https://bmms.example"


def test_the_environment_written_for_a_runner_reads_back_as_the_same_settings() -> None:
    settings = RunnerSettings(
        artifact="/srv/artifact.json", port=7000, resource=f"{ISSUER}/servers/s1/mcp", issuer=ISSUER,
        server_id="s1", org_id="o1", allowed_origins=("https://a.example", "https://b.example"),
        nats_url="nats://bus:4222", nats_password="secret", insecure_no_auth=False, tool_timeout_seconds=2.5,
    )
    env = settings.to_environment()
    assert env["BMMS_RUNNER_ALLOWED_ORIGINS"] == "https://a.example,https://b.example"
    assert env["BMMS_RUNNER_PORT"] == "7000" and "BMMS_RUNNER_HOST" not in env  # defaults are not written
    assert RunnerSettings.from_environment(env) == settings
    assert "secret" not in repr(settings)


def test_a_malformed_or_missing_runner_variable_is_named() -> None:
    with pytest.raises(SystemExit, match="BMMS_RUNNER_PORT"):
        RunnerSettings.from_environment({"BMMS_RUNNER_ARTIFACT": "a", "BMMS_RUNNER_INSECURE_NO_AUTH": "1",
                                         "BMMS_RUNNER_PORT": "seven"})
    with pytest.raises(SystemExit, match="BMMS_RUNNER_ARTIFACT"):
        RunnerSettings.from_environment({"BMMS_RUNNER_INSECURE_NO_AUTH": "1"})
    with pytest.raises(SystemExit, match="BMMS_RUNNER_RESOURCE and BMMS_RUNNER_ISSUER"):
        RunnerSettings.from_environment({"BMMS_RUNNER_ARTIFACT": "a"})


def test_platform_settings_are_read_by_the_same_code() -> None:
    settings = load_settings({"BMMS_HTTP_PORT": "9000", "BMMS_LOG_JSON": "false", "ANTHROPIC_API_KEY": "k"})
    assert settings.http_port == 9000 and settings.log_json is False and settings.anthropic_api_key == "k"
    with pytest.raises(ValueError, match="BMMS_RPC_TIMEOUT"):
        load_settings({"BMMS_RPC_TIMEOUT": "soon"})


def test_a_runner_spec_environment_is_its_settings_with_what_the_backend_placed_and_its_secrets() -> None:
    settings = RunnerSettings(artifact="", resource=f"{ISSUER}/servers/s1/mcp", issuer=ISSUER, server_id="s1",
                              org_id="o1", nats_url="nats://127.0.0.1:4222", nats_password="bus-secret",
                              allow_private_upstreams=True)
    spec = RunnerSpec(server_id="s1", org_id="o1", version=1, artifact_hash="h", artifact_json=b"{}",
                      settings=settings, secrets={"API_KEY": "k-1"})
    env = spec.environment(artifact="/srv/a.json", host="0.0.0.0", port=7000, worker="unix:/w.sock",
                           nats_url="nats://host.docker.internal:4222")
    assert env.pop("BMMS_SECRET_API_KEY") == "k-1" and "k-1" not in repr(spec)
    assert env["BMMS_RUNNER_ALLOW_PRIVATE_UPSTREAMS"] == "1"  # what egress reads
    assert RunnerSettings.from_environment(env) == msgspec.structs.replace(
        settings, artifact="/srv/a.json", host="0.0.0.0", port=7000, worker="unix:/w.sock",
        nats_url="nats://host.docker.internal:4222",
    )
