-- The Authorization Server's tables, owned by the oauth actor. Nothing secret is stored in clear:
-- client secrets, authorization codes, refresh tokens and consent CSRF tokens are SHA-256 digests of
-- 256-bit random values; token-signing private keys are AES-GCM encrypted under BMMS_SECRET_KEY.
CREATE TABLE oauth_clients (
    client_id                  text        PRIMARY KEY,
    kind                       text        NOT NULL CHECK (kind IN ('dynamic', 'preregistered')),
    client_name                text,
    client_uri                 text,
    redirect_uris              text[]      NOT NULL,
    token_endpoint_auth_method text        NOT NULL,
    grant_types                text[]      NOT NULL,
    response_types             text[]      NOT NULL,
    scope                      text,
    -- SHA-256 of the canonical registration metadata: the same metadata registers the same client
    metadata_digest            text,
    registered_from            text,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    last_authorized_at         timestamptz
);
CREATE UNIQUE INDEX oauth_clients_dynamic_metadata ON oauth_clients (metadata_digest) WHERE kind = 'dynamic';
CREATE INDEX oauth_clients_unused ON oauth_clients (created_at) WHERE kind = 'dynamic' AND last_authorized_at IS NULL;

-- A confidential client may hold a few live secrets (each re-registration hands out a new one).
CREATE TABLE oauth_client_secrets (
    secret_hash text        PRIMARY KEY,
    client_id   text        NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_client_secrets_client ON oauth_client_secrets (client_id, created_at);

-- Registrations per source address per hour (Dynamic Client Registration rate limit).
CREATE TABLE oauth_registration_attempts (
    source       text        NOT NULL,
    window_start timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    PRIMARY KEY (source, window_start)
);

-- A validated authorization request shown to a person on the consent page.
CREATE TABLE oauth_consents (
    consent_id      text        PRIMARY KEY,
    csrf_hash       text        NOT NULL,
    subject         text        NOT NULL,
    org_id          text        NOT NULL,
    client_id       text        NOT NULL,
    redirect_uri    text        NOT NULL,
    state           text,
    code_challenge  text        NOT NULL,
    resource        text        NOT NULL,
    scopes_required text[]      NOT NULL,
    scopes_optional text[]      NOT NULL,
    issuer          text        NOT NULL,
    expires_at      timestamptz NOT NULL
);

-- A grant: one consent's chain of refresh tokens (the "family"); revoking it ends them all.
CREATE TABLE oauth_grants (
    grant_id       text        PRIMARY KEY,
    client_id      text        NOT NULL,
    subject        text        NOT NULL,
    org_id         text        NOT NULL,
    resource       text        NOT NULL,
    scope          text        NOT NULL,
    issuer         text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text
);

CREATE TABLE oauth_codes (
    code_hash      text        PRIMARY KEY,
    grant_id       text        NOT NULL REFERENCES oauth_grants (grant_id) ON DELETE CASCADE,
    redirect_uri   text        NOT NULL,
    code_challenge text        NOT NULL,
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz
);

CREATE TABLE oauth_refresh_tokens (
    token_hash text        PRIMARY KEY,
    grant_id   text        NOT NULL REFERENCES oauth_grants (grant_id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX oauth_refresh_tokens_grant ON oauth_refresh_tokens (grant_id);

-- Token-signing keys. The newest unretired key signs; a retired key stays in the JWKS until every token
-- it signed has expired.
CREATE TABLE oauth_signing_keys (
    kid           text        PRIMARY KEY,
    public_jwk    text        NOT NULL,
    private_key   bytea       NOT NULL,  -- nonce || AES-GCM(PEM), associated data: the kid
    created_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz
);
