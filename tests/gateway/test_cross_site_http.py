"""What another site's page cannot make a signed-in person's browser do here: no state-changing request
with the session cookie from a foreign origin (sibling subdomains and other ports included), no JSON route
reading a form or `text/plain` body, and no page without a Content-Security-Policy or with third-party script.
The requests are the ones a browser sends for a cross-site form or `fetch(..., {credentials: "include"})`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar, Response, get
from litestar.testing import AsyncTestClient

from gateway.browser import HTML_HEADERS, page_headers_middleware
from tests.gateway.conftest import Gateway, assert_problem
from tests.support.mailbox import Mailbox
from tests.support.sign_in import fresh_email, sign_in, with_session


@pytest.fixture(scope="module")
async def http(org_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=org_gateway.base_url, timeout=15) as client:
        yield client


def from_origin(session: str, origin: str | None, **headers: str) -> dict[str, str]:
    sent = {**with_session(session), **headers}
    if origin is not None:
        sent["Origin"] = origin
    return sent


async def invites(http: httpx.AsyncClient, session: str) -> list[str]:
    listed = await http.get("/v1/org/invites", headers=with_session(session))
    assert listed.status_code == 200, listed.text
    return [i["email"] for i in listed.json()["invites"]]


async def test_cookie_writes_from_another_origin_are_refused(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    session = await sign_in(http, mailbox, fresh_email("victim"))
    own = str(http.base_url).rstrip("/")
    port = http.base_url.port
    foreign = ["https://evil.example", f"http://127.0.0.1:{port + 1}", f"http://evil.127.0.0.1.nip.io:{port}",
               "null"]
    for origin in foreign:
        email = fresh_email("planted")
        invite = await http.post("/v1/invites", json={"email": email}, headers=from_origin(session, origin))
        assert assert_problem(invite, 403)["code"] == "forbidden", origin
        key = await http.post("/v1/api-keys", json={"label": "stolen"}, headers=from_origin(session, origin))
        assert_problem(key, 403)
        stop = await http.post("/v1/servers/s0000000000000000/stop", headers=from_origin(session, origin))
        assert_problem(stop, 403)
        out = await http.post("/v1/auth/sign-out", headers=from_origin(session, origin))
        assert_problem(out, 403)
        assert email not in await invites(http, session)
    # a browser that sends no Origin still names where the request came from
    same_site = from_origin(session, None, **{"Sec-Fetch-Site": "same-site"})
    fetched = await http.post("/v1/api-keys", json={}, headers=same_site)
    assert_problem(fetched, 403)
    keys = await http.get("/v1/api-keys", headers=with_session(session))
    assert keys.json()["keys"] == []  # nothing was created by any of them

    # our own pages, and clients that are not browsers, still write with the cookie
    email = fresh_email("invited")
    ours = await http.post("/v1/invites", json={"email": email}, headers=from_origin(session, own))
    assert ours.status_code == 201, ours.text
    plain = await http.post("/v1/api-keys", json={"label": "cli"}, headers=from_origin(session, None))
    assert plain.status_code == 201, plain.text
    # an API key is never sent by a browser on its own: it works from any origin
    with_key = {"Authorization": f"Bearer {plain.json()['secret']}", "Origin": "https://elsewhere.example"}
    assert (await http.get("/v1/me", headers=with_key)).status_code == 200


async def test_json_routes_refuse_form_and_text_bodies(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    session = await sign_in(http, mailbox, fresh_email("simple"))
    own = str(http.base_url).rstrip("/")
    email = fresh_email("texted")
    # the "simple requests" a cross-site form can send, here even from our own origin
    text = await http.post("/v1/invites", content=f'{{"email": "{email}"}}'.encode(),
                           headers=from_origin(session, own, **{"Content-Type": "text/plain"}))
    assert "application/json" in str(assert_problem(text, 415)["detail"])
    form = await http.post("/v1/api-keys", content=b"label=stolen",
                           headers=from_origin(session, own, **{"Content-Type": "application/x-www-form-urlencoded"}))
    assert_problem(form, 415)
    multipart = await http.post("/v1/invites", files={"email": (None, email)}, headers=from_origin(session, own))
    assert_problem(multipart, 415)
    assert email not in await invites(http, session)
    assert (await http.get("/v1/api-keys", headers=with_session(session))).json()["keys"] == []


async def test_the_api_reference_is_the_openapi_document_without_third_party_script(http: httpx.AsyncClient) -> None:
    for path in ("/schema", "/schema/openapi.json"):
        reference = await http.get(path)
        assert reference.status_code == 200, path
        assert "json" in reference.headers["content-type"] and "<script" not in reference.text
        assert reference.json()["openapi"].startswith("3.")
    for renderer in ("/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc", "/schema/scalar"):
        assert (await http.get(renderer)).status_code == 404, renderer


async def test_every_html_page_has_a_content_security_policy_and_no_third_party_script(
    http: httpx.AsyncClient,
) -> None:
    pages = [
        await http.get("/sign-in"),
        await http.get("/v1/auth/magic-link/callback", params={"token": "x"}),
        await http.get("/oauth/authorize", params={"client_id": "nobody"}),
        await http.get("/oauth/authorize"),
    ]
    for page in pages:
        assert page.headers["content-type"] == "text/html; charset=utf-8", (page.request.url, page.headers)
        policy = page.headers.get("content-security-policy", "")
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, (page.request.url, policy)
        assert "'unsafe-inline'" not in policy and "<script" not in page.text and "cdn." not in page.text
        # no inline style either: every page is styled by a sheet the gateway serves itself
        assert "<style" not in page.text and " style=" not in page.text
        sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)">', page.text)
        assert sheets and all(sheet.startswith("/static/") for sheet in sheets), page.text
        for sheet in sheets:
            served = await http.get(sheet)
            assert served.status_code == 200 and served.headers["content-type"].startswith("text/css")


async def test_what_a_person_typed_is_shown_escaped_never_as_markup(http: httpx.AsyncClient) -> None:
    sign_in = await http.get("/sign-in")
    form = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', sign_in.text))
    typed = '"><script>alert(1)</script>'
    answer = await http.post("/sign-in", data={**form, "email": typed, "next": ""},
                             headers={"Origin": str(http.base_url).rstrip("/")})
    assert answer.status_code == 400 and "That is not an email address" in answer.text, answer.text
    assert "<script>" not in answer.text and 'value="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in answer.text


async def test_an_html_answer_without_its_own_policy_gets_the_default_one() -> None:
    @get("/bare", media_type="text/html")
    async def bare() -> str:
        return "<p>hello</p>"

    @get("/own", media_type="text/html")
    async def own() -> Response[str]:
        policy = {"Content-Security-Policy": "default-src 'self'"}
        return Response("<p>mine</p>", media_type="text/html", headers=policy)

    @get("/data")
    async def data() -> dict[str, str]:
        return {"a": "b"}

    app = Litestar([bare, own, data], middleware=[page_headers_middleware])
    async with AsyncTestClient(app) as client:
        assert (await client.get("/bare")).headers["content-security-policy"] == \
            HTML_HEADERS[b"content-security-policy"].decode()
        assert (await client.get("/bare")).headers["x-frame-options"] == "DENY"
        assert (await client.get("/own")).headers.get_list("content-security-policy") == ["default-src 'self'"]
        assert "content-security-policy" not in (await client.get("/data")).headers
