"""Which tokens the Authorization Server takes for its own access tokens (what RFC 7009 revocation of an
access token trusts): signed with a published key, typed at+jwt, issued by this issuer."""

from __future__ import annotations

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from actors.oauth.tokens import mint_access_token, new_secret, our_access_token_claims

ISSUER = "https://bmms.example"
OURS = RSAKey.generate_key(2048, parameters={"kid": "ours", "alg": "RS256", "use": "sig"})
STRANGER = RSAKey.generate_key(2048, parameters={"kid": "ours", "alg": "RS256", "use": "sig"})
PUBLISHED = KeySet([RSAKey.import_key(OURS.as_dict(private=False))])


def _minted(issuer: str = ISSUER, key: RSAKey = OURS) -> tuple[str, str]:
    return mint_access_token(key, issuer=issuer, subject="p1", audience=f"{ISSUER}/servers/s1/mcp", client_id="c1",
                             scope="mcp:tools:read", org_id="o1", lifetime=900, grant_id="g1")


def test_an_access_token_we_signed_for_this_issuer_is_ours() -> None:
    token, jti = _minted()
    claims = our_access_token_claims(token, PUBLISHED, ISSUER)
    assert claims is not None and claims["jti"] == jti and claims["gid"] == "g1" and claims["client_id"] == "c1"


def test_a_token_of_another_issuer_or_signed_by_another_key_is_not_ours() -> None:
    assert our_access_token_claims(_minted(issuer="https://elsewhere.example")[0], PUBLISHED, ISSUER) is None
    assert our_access_token_claims(_minted(key=STRANGER)[0], PUBLISHED, ISSUER) is None  # same kid, other key


def test_another_kind_of_jwt_or_garbage_is_not_an_access_token() -> None:
    claims = {"iss": ISSUER, "sub": "p1", "jti": "x"}
    id_token = jwt.encode({"alg": "RS256", "kid": "ours"}, claims, OURS, algorithms=["RS256"])  # no typ at+jwt
    assert our_access_token_claims(id_token, PUBLISHED, ISSUER) is None
    for junk in (new_secret("bmms_rt_"), "a.b.c", "", "eyJhbGciOiJub25lIn0.e30."):
        assert our_access_token_claims(junk, PUBLISHED, ISSUER) is None
