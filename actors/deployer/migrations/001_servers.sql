-- The deployer's registry of hosted servers: desired state and versions (what runs is the backend's).
CREATE TABLE servers (
    server_id   text        PRIMARY KEY,
    org_id      text        NOT NULL,
    name        text        NOT NULL,
    url         text        NOT NULL UNIQUE,
    backend     text        NOT NULL,
    desired     text        NOT NULL CHECK (desired IN ('running', 'stopped', 'deleted')),
    state       text        NOT NULL CHECK (state IN ('deploying', 'running', 'stopped', 'failed', 'deleted')),
    version     integer,
    detail      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX servers_org ON servers (org_id) WHERE desired <> 'deleted';

CREATE TABLE server_versions (
    server_id      text        NOT NULL REFERENCES servers (server_id),
    version        integer     NOT NULL,
    build_id       text        NOT NULL UNIQUE,
    artifact_hash  text        NOT NULL,
    tools          text[]      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, version)
);
