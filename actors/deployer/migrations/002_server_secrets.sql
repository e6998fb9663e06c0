-- Upstream credentials of hosted servers, sealed with AES-256-GCM (actors.runtime.crypto, purpose
-- "server secrets"); the associated data binds each ciphertext to its server and name (or build and name),
-- so a row copied onto another server or name does not open. No column holds a value in clear.
CREATE TABLE server_secrets (
    server_id   text        NOT NULL REFERENCES servers (server_id),
    name        text        NOT NULL CHECK (name ~ '^[A-Z][A-Z0-9_]{0,63}$'),
    sealed      bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL,
    PRIMARY KEY (server_id, name)
);

-- Secrets given with a build request, kept until the build's server exists (then moved onto it).
CREATE TABLE build_secrets (
    build_id    text        NOT NULL,
    org_id      text        NOT NULL,
    name        text        NOT NULL CHECK (name ~ '^[A-Z][A-Z0-9_]{0,63}$'),
    sealed      bytea       NOT NULL,
    staged_at   timestamptz NOT NULL DEFAULT now(),
    staged_by   text        NOT NULL,
    PRIMARY KEY (build_id, name)
);
CREATE INDEX build_secrets_staged_at ON build_secrets (staged_at);
