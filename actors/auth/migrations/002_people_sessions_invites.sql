-- People, their memberships, invitations, magic links, sessions and sign-in rate limits.
-- Magic-link and session tokens are 256-bit random values stored only as SHA-256 digests.
CREATE TABLE people (
    person_id  text        PRIMARY KEY,
    email      text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE memberships (
    org_id    text        NOT NULL REFERENCES orgs (org_id),
    person_id text        NOT NULL REFERENCES people (person_id),
    role      text        NOT NULL CHECK (role IN ('owner', 'member')),
    -- clock_timestamp, not now(): memberships made in one transaction keep their order ("first org")
    joined_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (org_id, person_id)
);
CREATE INDEX memberships_by_person ON memberships (person_id, joined_at);
CREATE TABLE invites (
    invite_id   text        PRIMARY KEY,
    org_id      text        NOT NULL REFERENCES orgs (org_id),
    email       text        NOT NULL,
    role        text        NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member')),
    invited_by  text        NOT NULL REFERENCES people (person_id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    accepted_at timestamptz
);
CREATE UNIQUE INDEX invites_pending ON invites (org_id, email) WHERE accepted_at IS NULL;
CREATE INDEX invites_by_email ON invites (email) WHERE accepted_at IS NULL;
CREATE TABLE magic_links (
    token_hash bytea       PRIMARY KEY,
    email      text        NOT NULL,
    next_path  text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX magic_links_expiry ON magic_links (expires_at);
CREATE TABLE sessions (
    session_id text        PRIMARY KEY,
    token_hash bytea       NOT NULL UNIQUE,
    person_id  text        NOT NULL REFERENCES people (person_id),
    user_agent text        NOT NULL DEFAULT '',
    client_ip  text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX sessions_by_person ON sessions (person_id, created_at);
-- Fixed-window counters shared by every copy of the auth actor: one row per (bucket, window).
CREATE TABLE rate_limits (
    bucket       text        NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer     NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
CREATE INDEX rate_limits_by_window ON rate_limits (window_start);
ALTER TABLE api_keys ADD COLUMN created_by text REFERENCES people (person_id);
CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at) WHERE revoked_at IS NULL;
