-- Access tokens revoked one by one (RFC 7009): their `jti` is listed in the REVOKED bucket until they expire,
-- and written there again when the actor starts (a write lost to a bus fault is made again).
CREATE TABLE oauth_revoked_tokens (
    jti        text        PRIMARY KEY,
    grant_id   text        NOT NULL,
    org_id     text        NOT NULL,
    client_id  text        NOT NULL,
    revoked_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX oauth_revoked_tokens_revoked ON oauth_revoked_tokens (revoked_at);

-- A person leaving an organisation ends every grant they gave there.
CREATE INDEX oauth_grants_person ON oauth_grants (org_id, subject);
CREATE INDEX oauth_grants_revoked ON oauth_grants (revoked_at) WHERE revoked_at IS NOT NULL;
