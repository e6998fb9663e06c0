-- The build registry: one row per build, owned by the planner actor.
CREATE TABLE builds (
    build_id        text        PRIMARY KEY,
    org_id          text        NOT NULL,
    name            text        NOT NULL,
    requested_by    text        NOT NULL,
    source          jsonb       NOT NULL,
    idempotency_key text,
    requested_seq   bigint,
    status          text        NOT NULL DEFAULT 'requested',
    status_seq      bigint      NOT NULL DEFAULT 0,
    failure         text,
    last_seq        bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, idempotency_key)
);
CREATE INDEX builds_by_org ON builds (org_id, created_at DESC);
