-- The plan each build got. Planning runs once per build: a redelivered `requested` event reuses the
-- recorded plan (plain-words plans come from Claude and would differ on a second run).
CREATE TABLE build_plans (
    build_id   text        PRIMARY KEY,
    plan_hash  text        NOT NULL,
    tool_count integer     NOT NULL,
    planned_at timestamptz NOT NULL DEFAULT now()
);
