-- Organisations and their API keys, owned by the auth actor. Key secrets are stored as argon2id hashes.
CREATE TABLE orgs (
    org_id     text        PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE api_keys (
    key_id      text        PRIMARY KEY,
    org_id      text        NOT NULL REFERENCES orgs (org_id),
    label       text        NOT NULL,
    secret_hash text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
