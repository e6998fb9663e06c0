"""`bmms dev` as a person uses it: start, use the printed URL and key, Ctrl-C, start again on the same data."""

from __future__ import annotations

import html
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import psutil
import pytest

from bus_schemas.builds import PlainWords
from ops.devstack import DEV_PERSON
from ops.operator import DEV_API_KEY_FILE, STACK_FILE
from tests.support.oauth_browser import consent_form
from tests.support.oauth_helpers import pkce_pair, query_of
from tests.support.sign_in import form_fields

REDIRECT = "http://127.0.0.1:33419/callback"

STARTUP_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0


@dataclass
class DevRun:
    """A running `bmms dev` and what it printed."""

    process: subprocess.Popen[str]
    data_dir: Path
    url: str
    key: str
    org_id: str
    stdout: list[str]
    stderr_path: Path
    dashboard: str = ""
    """The printed one-time link that signs the dev person into the dashboard."""

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text()[-4000:]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short and under /tmp: PostgreSQL's Unix socket path must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="bmms-dev-", dir="/tmp"))
    yield root / "data"
    shutil.rmtree(root, ignore_errors=True)


def dev_env() -> dict[str, str]:
    """The test process's environment without any BMMS_* setting, so `bmms dev` starts its own stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMMS_")}
    env["BMMS_LOG_JSON"] = "false"
    return env


def start_dev(data_dir: Path, log_name: str) -> DevRun:
    """Start `bmms dev` on a free gateway port and wait, bounded, for its printed URL and API key."""
    stderr_path = data_dir.parent / f"{log_name}.stderr"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "dev", "--data-dir", str(data_dir), "--port", "0"],
            env=dev_env(), stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    printed: list[str] = []
    found: dict[str, str] = {}
    patterns = {
        "url": r"^\s*URL:\s+(http://\S+)",
        "key": r"^\s*API key:\s+(\S+)",
        "org_id": r"^\s*Org:\s+dev \(id (\S+)\)",
        "dashboard": r"^\s*Dashboard:\s+(http://\S+)",
    }
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while "ready" not in found:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0))
        except queue.Empty:
            process.kill()
            pytest.fail(f"bmms dev printed no URL within {STARTUP_TIMEOUT}s:\n{stderr_path.read_text()[-4000:]}")
        if line is None:
            process.wait(10)
            pytest.fail(f"bmms dev exited with {process.returncode} before it was ready:\n"
                        f"{''.join(printed)}\n{stderr_path.read_text()[-4000:]}")
        printed.append(line)
        for name, pattern in patterns.items():
            match = re.match(pattern, line)
            if match:
                found[name] = match.group(1)
        if line.startswith("Press Ctrl-C"):
            found["ready"] = "yes"
    assert {"url", "key", "org_id"} <= set(found), "".join(printed)
    return DevRun(process, data_dir, found["url"], found["key"], found["org_id"], printed, stderr_path,
                  found.get("dashboard", ""))


def stop_dev(run: DevRun) -> list[int]:
    """Ctrl-C `bmms dev` and wait for it; returns the process ids it ran, read from its stack record."""
    record = json.loads((run.data_dir / STACK_FILE).read_text())
    run.process.send_signal(signal.SIGINT)
    try:
        returncode = run.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        run.process.kill()
        pytest.fail(f"bmms dev did not stop within {STOP_TIMEOUT}s after SIGINT:\n{run.stderr_tail()}")
    assert returncode == 0, run.stderr_tail()
    return list(record["pids"].values())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """The pids still running after `timeout` (PostgreSQL is not our child: it may take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def submit_build(url: str, key: str) -> httpx.Response:
    body = {"name": "weather", "source": msgspec.to_builtins(PlainWords(text="Current weather for a city"))}
    return httpx.post(f"{url}/v1/builds", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_dev_stack_serves_stops_cleanly_and_keeps_its_data(data_dir: Path) -> None:
    first = start_dev(data_dir, "first")
    try:
        assert httpx.get(f"{first.url}/readyz", timeout=10).status_code == 200
        key_file = data_dir / DEV_API_KEY_FILE
        assert key_file.read_text().strip() == first.key
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert any(f"{first.url}/v1/builds" in line for line in first.stdout), "no curl example printed"

        accepted = submit_build(first.url, first.key)
        assert accepted.status_code == 202, accepted.text
        build_id = accepted.json()["build_id"]

        events = subprocess.run(
            [sys.executable, "-m", "ops.cli", "events", "--org", first.org_id, "--build", build_id, "--no-follow",
             "--json", "--data-dir", str(data_dir)],
            env=dev_env(), capture_output=True, text=True, timeout=60,
        )
        assert events.returncode == 0, events.stderr
        kinds = [json.loads(line)["event"]["type"] for line in events.stdout.splitlines()]
        assert kinds[0] == "build.requested.v1"
    finally:
        if first.process.poll() is None:
            pids = stop_dev(first)
        else:
            pytest.fail(f"bmms dev died during the test:\n{first.stderr_tail()}")
    assert wait_gone(pids) == [], f"processes left after Ctrl-C: {pids}"
    assert not (data_dir / STACK_FILE).exists()

    second = start_dev(data_dir, "second")
    try:
        assert second.key == first.key
        again = httpx.get(f"{second.url}/v1/builds/{build_id}", headers={"Authorization": f"Bearer {second.key}"},
                          timeout=30)
        assert again.status_code == 200, again.text
        assert again.json()["build_id"] == build_id
    finally:
        pids = stop_dev(second)
    assert wait_gone(pids) == []


def test_dev_stack_stops_everything_when_a_child_dies(data_dir: Path) -> None:
    run = start_dev(data_dir, "crash")
    record = json.loads((data_dir / STACK_FILE).read_text())
    os.kill(record["pids"]["codegen"], signal.SIGKILL)
    try:
        returncode = run.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        run.process.kill()
        pytest.fail(f"bmms dev kept running after codegen died:\n{run.stderr_tail()}")
    assert returncode == 1
    assert "codegen exited unexpectedly" in run.stderr_tail()
    assert wait_gone(list(record["pids"].values())) == []


def printed_build_body(run: DevRun) -> dict[str, object]:
    """The JSON body of the printed curl."""
    match = re.search(r"-d '(.+)'", "".join(run.stdout))
    assert match, "".join(run.stdout)
    body: dict[str, object] = json.loads(match.group(1))
    return body


def deployed_build(run: DevRun, body: dict[str, object]) -> dict[str, object]:
    """Submit a build with the printed key and wait, bounded, until it deployed; its view."""
    headers = {"Authorization": f"Bearer {run.key}"}
    created = httpx.post(f"{run.url}/v1/builds", json=body, headers=headers, timeout=30)
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        read = httpx.get(f"{run.url}{created.headers['location']}", headers=headers, timeout=30)
        view: dict[str, object] = read.json()
        if view["status"] in ("deployed", "failed"):
            assert view["status"] == "deployed", view
            return view
        time.sleep(0.2)  # another process's build: nothing to wait on but its state (bounded by the deadline)
    pytest.fail(f"the printed build did not deploy within {STARTUP_TIMEOUT}s:\n{run.stderr_tail()}")


def test_the_printed_link_signs_in_the_owner_of_the_dev_key_who_can_authorize_mcp_clients(data_dir: Path) -> None:
    run = start_dev(data_dir, "first-minute")
    try:
        assert run.dashboard.startswith(f"{run.url}/v1/auth/magic-link/callback?token="), "".join(run.stdout)
        with httpx.Client(timeout=30) as browser:
            # The link, as a person opens it: a page with a "Sign in" button, then the dashboard.
            page = browser.get(run.dashboard)
            assert page.status_code == 200 and '<button type="submit">Sign in</button>' in page.text, page.text
            signed_in = browser.post(run.dashboard.split("?")[0], data=form_fields(html.unescape(page.text)))
            assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard", signed_in.text
            assert browser.cookies.get("bmms_session")
            assert browser.get(f"{run.url}/dashboard").status_code == 200
            me = browser.get(f"{run.url}/v1/me").json()
            assert me["email"] == DEV_PERSON and me["org_id"] == run.org_id and me["role"] == "owner"
            # The link works once.
            assert browser.post(run.dashboard.split("?")[0], data=form_fields(html.unescape(page.text))
                                ).status_code != 303

            # A server built with the printed curl is the dev person's organisation's: an MCP client's
            # authorization reaches the consent page, and approving it gives the client a code.
            view = deployed_build(run, printed_build_body(run))
            registered = httpx.post(f"{run.url}/oauth/register", timeout=30, json={
                "client_name": "first minute", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code"], "response_types": ["code"]})
            assert registered.status_code == 201, registered.text
            _, challenge = pkce_pair()
            consent = browser.get(f"{run.url}/oauth/authorize", params={
                "client_id": registered.json()["client_id"], "redirect_uri": REDIRECT, "response_type": "code",
                "state": "s1", "code_challenge": challenge, "code_challenge_method": "S256",
                "resource": str(view["url"])})
            assert consent.status_code == 200, (consent.status_code, consent.headers.get("location"), consent.text)
            decided = browser.post(f"{run.url}/oauth/authorize/decision",
                                   data={**consent_form(consent.text), "decision": "approve",
                                         "scope": re.findall(r'name="scope" value="([^"]+)"', consent.text)})
            assert decided.status_code == 303, decided.text
            answer = query_of(decided.headers["location"])
            assert "error" not in answer and answer["code"] and answer["state"] == "s1", answer
    finally:
        pids = stop_dev(run)
    assert wait_gone(pids) == []
