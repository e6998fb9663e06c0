-- The metering actor's tables. Attribution comes from metering's own records (metering_servers, fed by
-- the deployer's `changed` events), never from what a usage event claims.

-- Which organisation owns each server and whether it runs; `state_seq` (SERVERS stream sequence) keeps
-- a late, older event from overwriting a newer state.
CREATE TABLE metering_servers (
    server_id  text        PRIMARY KEY,
    org_id     text        NOT NULL,
    state      text        NOT NULL,
    state_seq  bigint      NOT NULL,
    changed_at timestamptz NOT NULL
);
CREATE INDEX metering_servers_running ON metering_servers (org_id) WHERE state = 'running';

-- The id of every counted tool call: a redelivered or re-published event is counted once.
CREATE TABLE metering_tool_calls_seen (
    event_id text PRIMARY KEY,
    day      date NOT NULL
);

-- Tool calls per organisation, UTC day, server and tool.
CREATE TABLE metering_tool_usage_daily (
    org_id      text             NOT NULL,
    day         date             NOT NULL,
    server_id   text             NOT NULL,
    tool        text             NOT NULL,
    calls       bigint           NOT NULL,
    errors      bigint           NOT NULL,
    duration_ms double precision NOT NULL,
    bytes_out   bigint           NOT NULL,
    PRIMARY KEY (org_id, day, server_id, tool)
);

-- Tool calls per organisation and UTC month (first day), kept beside the daily rows so a quota check
-- reads one row.
CREATE TABLE metering_tool_calls_monthly (
    org_id text   NOT NULL,
    month  date   NOT NULL,
    calls  bigint NOT NULL,
    PRIMARY KEY (org_id, month)
);

-- Usage events that claimed another organisation than the one owning their server: never counted, kept
-- for the operator (with the recorded owner) and logged.
CREATE TABLE metering_rejected (
    event_id     text        PRIMARY KEY,
    server_id    text        NOT NULL,
    claimed_org  text        NOT NULL,
    recorded_org text        NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now()
);

-- Requested builds, in stream order (builds per month count these, minus those refused for the quota).
CREATE TABLE metering_builds (
    build_id      text   PRIMARY KEY,
    org_id        text   NOT NULL,
    month         date   NOT NULL,
    requested_seq bigint NOT NULL
);
CREATE INDEX metering_builds_by_org ON metering_builds (org_id, month, requested_seq);

-- Builds the planner refused for the build quota; they do not count against it.
CREATE TABLE metering_builds_refused (
    build_id text PRIMARY KEY
);

-- When each step of each build started and finished (BUILDS stream time).
CREATE TABLE metering_build_steps (
    build_id    text        NOT NULL,
    step        text        NOT NULL,
    org_id      text        NOT NULL,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (build_id, step)
);
CREATE INDEX metering_build_steps_by_org ON metering_build_steps (org_id, finished_at);

-- Model tokens a build's plan cost.
CREATE TABLE metering_build_tokens (
    build_id      text   PRIMARY KEY,
    org_id        text   NOT NULL,
    month         date   NOT NULL,
    input_tokens  bigint NOT NULL,
    output_tokens bigint NOT NULL
);
CREATE INDEX metering_build_tokens_by_org ON metering_build_tokens (org_id, month);

-- Plans other than `default` (whose limits come from the BMMS_QUOTA_* settings); NULL is unlimited.
CREATE TABLE metering_plans (
    plan                 text        PRIMARY KEY CHECK (plan <> 'default'),
    builds_per_month     bigint,
    tool_calls_per_month bigint,
    running_servers      bigint,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Organisations on a plan other than `default`, and who put them there (the operator, or a payment
-- provider's subscription through actors/metering/billing.py).
CREATE TABLE metering_org_plans (
    org_id      text        PRIMARY KEY,
    plan        text        NOT NULL REFERENCES metering_plans (plan),
    source      text        NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now()
);

-- What the QUOTAS bucket says about each organisation metering has evaluated: the exceeded quotas as
-- `quota:limit:period` keys joined by spaces ('' = within every quota). Its row lock orders the copies'
-- writes to the bucket.
CREATE TABLE metering_quota_states (
    org_id     text        PRIMARY KEY,
    exceeded   text        NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX metering_quota_states_exceeded ON metering_quota_states (org_id) WHERE exceeded <> '';
